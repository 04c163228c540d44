"""Tests for core.config: round trips, validation messages, defaults from the environment."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import pytest

from core import config as config_mod
from core.config import (
    BACKBONES,
    PRECISIONS,
    SPECS,
    STRATEGIES,
    THRESHOLD_POLICIES,
    Config,
    default_artifacts_dir,
    default_data_root,
    form_limits,
)

REPO = Path(__file__).resolve().parent.parent


def _non_default() -> Config:
    return Config(
        input_size=48, weights="none", head_units=16, dropout=0.25, seed=7, batch_size=4,
        val_fraction=0.2, head_epochs=3, finetune_epochs=0, precision="mixed_bfloat16",
        strategy="mirrored", threshold_policy="youden", target_sensitivity=0.9,
        indeterminate_margin=0.05, cache_features=False, class_weighting=False,
    )


def test_dict_round_trip_keeps_every_field():
    cfg = _non_default()
    d = cfg.to_dict()
    assert d["class_names"] == ["NORMAL", "PNEUMONIA"]  # JSON-friendly list, not tuple
    json.dumps(d)  # plain JSON
    back = Config.from_dict(d)
    assert back == cfg
    assert back.class_names == ("NORMAL", "PNEUMONIA")


def test_save_load_round_trip(tmp_path):
    cfg = _non_default()
    p = tmp_path / "config.json"
    cfg.save(p)
    assert json.loads(p.read_text())["input_size"] == 48
    assert Config.load(p) == cfg


def test_from_dict_ignores_unknown_keys_with_a_warning(caplog):
    d = Config().to_dict()
    d["from_the_future"] = 1
    with caplog.at_level(logging.WARNING, logger="core.config"):
        cfg = Config.from_dict(d)
    assert cfg == Config()
    assert "from_the_future" in caplog.text


def test_from_dict_validates():
    d = Config().to_dict()
    d["input_size"] = 8
    with pytest.raises(ValueError, match="Received: input_size=8"):
        Config.from_dict(d)


def test_replace_returns_validated_copy():
    cfg = Config(weights="none")
    other = cfg.replace(input_size=96)
    assert other.input_size == 96 and cfg.input_size == 64
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        cfg.replace(batch_size=0)


def test_derived_properties():
    cfg = Config(input_size=32, weights="none")
    assert cfg.image_shape == (32, 32, 3)
    assert cfg.last_conv_layer == "block5_conv4"
    assert cfg.backbone_spec is BACKBONES["vgg19"]
    assert "random" in cfg.weights_source
    assert Config(weights="imagenet").weights_source == "imagenet"
    assert Config(weights="/x/y/vgg.h5").weights_source == "local file: vgg.h5"


@pytest.mark.parametrize("value", [None, "none", "NONE", ""])
def test_weights_none_spellings_normalise(value):
    assert Config(weights=value).weights == "none"


# (field, bad value, strings the message must contain besides "Received: field=...")
INVALID = [
    ("backbone", "resnet50", ["vgg19"]),
    ("input_size", 16, ["32", "512"]),
    ("input_size", 1024, ["32", "512"]),
    ("input_size", 64.0, ["integer"]),
    ("input_size", "64", ["integer"]),
    ("channels", 1, ["3"]),
    ("weights", "vgg19.bin", ["imagenet", "none", ".h5"]),
    ("weights", "ImageNet", ["imagenet", "none"]),
    ("strategy", "tpu", list(STRATEGIES)),
    ("precision", "float16", list(PRECISIONS)),
    ("threshold_policy", "f1", list(THRESHOLD_POLICIES)),
    ("head_epochs", -1, [">= 0"]),
    ("finetune_epochs", 1.5, [">= 0"]),
    ("batch_size", 0, ["1", "4096"]),
    ("batch_size", 10000, ["1", "4096"]),
    ("val_fraction", 0.0, ["(0, 0.5)"]),
    ("val_fraction", 0.5, ["(0, 0.5)"]),
    ("head_learning_rate", 0.0, ["(0, 1)"]),
    ("finetune_learning_rate", 2.0, ["(0, 1)"]),
    ("dropout", 1.0, ["[0, 1)"]),
    ("dropout", -0.1, ["[0, 1)"]),
    ("target_sensitivity", 0.3, ["[0.5, 1)"]),
    ("target_sensitivity", 1.0, ["[0.5, 1)"]),
    ("indeterminate_margin", 0.5, ["[0, 0.5)"]),
]


@pytest.mark.parametrize("field,value,allowed", INVALID, ids=[f"{f}={v!r}" for f, v, _ in INVALID])
def test_every_value_error_lists_allowed_and_received(field, value, allowed):
    with pytest.raises(ValueError) as ei:
        Config(**{field: value})
    msg = str(ei.value)
    assert f"Received: {field}={value!r}" in msg
    for a in allowed:
        assert a in msg, f"{a!r} missing from {msg!r}"


@pytest.mark.parametrize("field", ["val_fraction", "dropout", "target_sensitivity", "indeterminate_margin"])
def test_wrong_type_for_float_fields_is_a_value_error(field):
    with pytest.raises(ValueError, match=f"Received: {field}="):
        Config(**{field: "0.1"})


@pytest.mark.parametrize("value", [0, -8])
def test_head_units_validated(value):
    with pytest.raises(ValueError, match=f"Received: head_units={value!r}"):
        Config(head_units=value)


def test_default_data_root_env(monkeypatch, tmp_path):
    monkeypatch.delenv(config_mod.DATA_ROOT_ENV, raising=False)
    monkeypatch.setattr(config_mod, "DATA_ROOT_CANDIDATES", (tmp_path / "none-1", tmp_path / "none-2"))
    assert default_data_root() == Path("data/chest_xray")
    monkeypatch.setenv(config_mod.DATA_ROOT_ENV, str(tmp_path))
    assert default_data_root() == tmp_path


def test_default_data_root_falls_back_to_the_first_existing_candidate(monkeypatch, tmp_path):
    """Issue 15: without $PNEUMOSCOPE_DATA_ROOT, data/chest_xray, else ../shared/data/chest_xray."""
    monkeypatch.delenv(config_mod.DATA_ROOT_ENV, raising=False)
    shared = tmp_path / "shared" / "data" / "chest_xray"
    shared.mkdir(parents=True)
    monkeypatch.setattr(config_mod, "DATA_ROOT_CANDIDATES", (tmp_path / "repo" / "data" / "chest_xray", shared))
    assert default_data_root() == shared
    (tmp_path / "repo" / "data" / "chest_xray").mkdir(parents=True)
    assert default_data_root() == tmp_path / "repo" / "data" / "chest_xray"
    # The shipped candidates: the repository's data/chest_xray, then ../shared/data/chest_xray.
    repo = Path(config_mod.__file__).resolve().parent.parent
    monkeypatch.undo()
    assert repo.parent / "shared" / "data" / "chest_xray" in config_mod.DATA_ROOT_CANDIDATES
    assert repo / "data" / "chest_xray" in config_mod.DATA_ROOT_CANDIDATES


def test_default_artifacts_dir_env(monkeypatch, tmp_path):
    monkeypatch.delenv(config_mod.ARTIFACTS_ENV, raising=False)
    assert default_artifacts_dir() == Path(config_mod.__file__).resolve().parent.parent / "artifacts"
    monkeypatch.setenv(config_mod.ARTIFACTS_ENV, str(tmp_path))
    assert default_artifacts_dir() == tmp_path


def test_a_config_saved_in_a_registry_version_still_loads_unchanged():
    """The saved format is the field names and JSON values: the shipped version's config.json
    loads, and writing it back gives the same object (core/registry.py reads it with from_dict)."""
    d = json.loads((REPO / "artifacts" / "models" / "v0003-shipped" / "config.json").read_text())
    assert Config.from_dict(d).to_dict() == d


# --- the schema: constraints declared once per field (core.config.setting / Spec) -----------------
def _outside(spec) -> list:
    """Values just outside each bound of a number spec (the bound itself when it is open)."""
    out = []
    for bound, is_open, down in ((spec.lo, spec.lo_open, True), (spec.hi, spec.hi_open, False)):
        if bound is None:
            continue
        if is_open:
            out.append(bound)
        elif spec.kind == "int":
            out.append(bound - 1 if down else bound + 1)
        else:
            out.append(math.nextafter(bound, -math.inf if down else math.inf))
    return out


def _inside(spec) -> list:
    """Values just inside each bound (the bound itself when it is closed)."""
    out = []
    for bound, is_open, up in ((spec.lo, spec.lo_open, True), (spec.hi, spec.hi_open, False)):
        if bound is not None:
            out.append(math.nextafter(bound, math.inf if up else -math.inf) if is_open else bound)
    return out


def _bad_values() -> list[tuple[str, object]]:
    bad = []
    for name, spec in SPECS.items():
        if spec.kind in ("int", "float"):
            bad += [(name, v) for v in _outside(spec)]
            bad.append((name, "1"))  # a JSON config may carry a string
            if spec.kind == "int":
                bad.append((name, 1.0))
        elif spec.kind == "choice":
            bad += [(name, "not-a-choice"), (name, None)]
        elif spec.kind == "bool":
            bad += [(name, "yes"), (name, 1)]
        elif spec.kind == "name":
            bad += [(name, ""), (name, 3)]
    return bad


BAD = _bad_values()
CLI_SPECS = {name: spec for name, spec in SPECS.items() if spec.cli}
# The train flags as scripts call them (renamed ones keep their names: --head-lr, --patience...).
TRAIN_FLAGS = {
    "input_size": "--input-size", "weights": "--weights", "seed": "--seed", "batch_size": "--batch-size",
    "val_fraction": "--val-fraction", "head_epochs": "--head-epochs", "head_learning_rate": "--head-lr",
    "finetune_epochs": "--finetune-epochs", "finetune_learning_rate": "--finetune-lr",
    "finetune_schedule": "--finetune-schedule", "label_smoothing": "--label-smoothing",
    "average_last_epochs": "--average-last-epochs", "early_stopping_patience": "--patience",
    "precision": "--precision", "strategy": "--strategy", "threshold_policy": "--threshold-policy",
    "target_sensitivity": "--target-sensitivity", "include_feedback": "--include-feedback",
}


def test_every_constrained_field_has_a_spec():
    """Only the fields with an explicit rule in validate() (the label encoding) have no spec."""
    assert {f.name for f in dataclasses.fields(Config)} - set(SPECS) == {"class_names"}


@pytest.mark.parametrize("field,value", BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_every_bound_of_the_schema_is_enforced_with_the_received_form(field, value):
    with pytest.raises(ValueError) as ei:
        Config(**{field: value})
    msg = str(ei.value)
    assert msg.startswith(f"{field} must be ") and msg.endswith(f"Received: {field}={value!r}"), msg
    spec = SPECS[field]
    for c in spec.choices:  # the allowed values are listed
        assert repr(c) in msg


@pytest.mark.parametrize("field", [n for n, s in SPECS.items() if s.kind in ("int", "float")])
def test_values_just_inside_every_bound_are_accepted(field):
    for v in _inside(SPECS[field]):
        if field == "input_size":
            v = max(v, BACKBONES["vgg19"]["min_input_size"])
        assert getattr(Config(**{field: v}), field) == v


def test_cross_field_rule_input_size_follows_the_backbone(monkeypatch):
    monkeypatch.setitem(BACKBONES, "vgg19", {**BACKBONES["vgg19"], "min_input_size": 48})
    with pytest.raises(ValueError, match=r"input_size must be an integer in \[48, 512\]. Received: input_size=32"):
        Config(input_size=32)
    assert Config(backbone="micro", input_size=32).input_size == 32


def test_integer_bounds_are_written_as_integers():
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 4294967295\]\. Received: seed=-1"):
        Config(seed=-1)


# --- the train command's flags come from the same schema ------------------------------------------
def _train_parser():
    from core import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_train_flags_keep_their_names_and_are_the_schema_fields_with_a_cli_name():
    assert {n: s.cli for n, s in CLI_SPECS.items()} == TRAIN_FLAGS


@pytest.mark.parametrize("field", sorted(CLI_SPECS))
def test_every_cli_field_is_a_flag_with_the_schema_type_choices_and_default(field):
    spec, default = SPECS[field], getattr(Config(), field)
    actions = {a.dest: a for a in _train_parser()._actions}
    action = actions[field]
    assert action.option_strings == [spec.cli]
    assert action.default is None  # "not given": a --config file's value survives
    if spec.kind == "bool":
        assert action.const is True and action.nargs == 0
        return
    assert action.type is {"int": int, "float": float}.get(spec.kind, str)
    assert tuple(action.choices or ()) == spec.choices
    assert f"default {default}" in action.help
    for c in spec.choices:
        assert str(c) in action.help


CLI_OUTSIDE = [(n, v) for n, s in CLI_SPECS.items() if s.kind in ("int", "float") for v in _outside(s)]


@pytest.mark.parametrize("field,value", CLI_OUTSIDE, ids=[f"{f}={v!r}" for f, v in CLI_OUTSIDE])
def test_a_flag_outside_the_schema_bounds_is_refused_with_the_received_form(field, value):
    from core import cli

    args = _train_parser().parse_args([f"{SPECS[field].cli}={value!r}"])  # "=": -5e-324 is not an option
    parsed = getattr(args, field)
    assert parsed == value and type(parsed) is {"int": int, "float": float}[SPECS[field].kind]
    with pytest.raises(ValueError) as ei:
        cli.config_from_args(Config(), args)
    assert str(ei.value).endswith(f"Received: {field}={parsed!r}")


@pytest.mark.parametrize("field", [n for n, s in CLI_SPECS.items() if s.choices])
def test_a_flag_outside_the_schema_choices_is_a_usage_error(field, capsys):
    with pytest.raises(SystemExit) as ei:
        _train_parser().parse_args([SPECS[field].cli, "not-a-choice"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and all(repr(c) in err for c in SPECS[field].choices)


def test_flags_given_override_a_config_file_and_the_others_keep_its_values():
    from core import cli

    base = Config(weights="none", head_epochs=3, seed=5)
    args = _train_parser().parse_args(["--head-lr", "0.01", "--patience", "2", "--include-feedback"])
    cfg = cli.config_from_args(base, args)
    assert (cfg.head_learning_rate, cfg.early_stopping_patience, cfg.include_feedback) == (0.01, 2, True)
    assert (cfg.weights, cfg.head_epochs, cfg.seed) == ("none", 3, 5)
    assert cli.config_from_args(base, _train_parser().parse_args([])) == base


# --- the admin page's training form reads its limits from the same schema -------------------------
FORM_FIELDS = ("input_size", "head_epochs", "finetune_epochs", "batch_size", "head_learning_rate",
               "finetune_learning_rate", "val_fraction", "seed")  # the number widgets of app_pages/admin.py


@pytest.mark.parametrize("field", FORM_FIELDS)
def test_admin_form_limits_come_from_the_schema(field):
    spec, lim = SPECS[field], form_limits(field)
    num = int if spec.kind == "int" else float
    assert all(type(lim[k]) is num for k in ("min_value", "max_value", "step") if k in lim)  # no int/float mix
    for key, bound, is_open in (("min_value", spec.lo, spec.lo_open), ("max_value", spec.hi, spec.hi_open)):
        if bound is not None and not is_open and key[:3] not in dict(spec.form):
            assert lim[key] == bound  # a closed bound of the schema is the widget's
        spec.check(field, lim[key])  # a form-only limit lies inside the allowed range
    assert lim["min_value"] <= getattr(Config(), field) <= lim["max_value"]  # the default fits the widget


def test_admin_form_limits_refuse_a_field_without_a_closed_range():
    with pytest.raises(ValueError, match="form 'max'"):
        form_limits("aug_zoom")  # no upper bound and no form max: a spec mistake, said so
    with pytest.raises(ValueError, match="Received: name='precision'"):
        form_limits("precision")


# The training form's widgets (app_pages/admin.py) by label -> the Config field each sets.
FORM_LABELS = {
    "Input size (px, square)": "input_size", "Head epochs (phase 1, base frozen)": "head_epochs",
    "Fine-tune epochs (phase 2, all layers)": "finetune_epochs", "Batch size": "batch_size",
    "Head learning rate": "head_learning_rate", "Fine-tune learning rate": "finetune_learning_rate",
    "Validation fraction (split by patient)": "val_fraction", "Seed": "seed",
}


@pytest.mark.slow  # an AppTest flow (sign in, render): ~4 s
def test_admin_training_form_draws_the_schema_limits(monkeypatch, tmp_path, sample_root):
    """The rendered form's widgets have the limits form_limits gives (the page declares none of its own)."""
    from streamlit.testing.v1 import AppTest

    assert sorted(FORM_LABELS.values()) == sorted(FORM_FIELDS)
    monkeypatch.setenv("PNEUMOSCOPE_ARTIFACTS", str(tmp_path / "artifacts"))
    monkeypatch.setenv("PNEUMOSCOPE_DATA_ROOT", str(sample_root))
    monkeypatch.setenv("PNEUMOSCOPE_ADMIN_PASSWORD", "correct horse battery staple")
    monkeypatch.setattr("ui.admin_components.imagenet_status", lambda *a, **k: (True, "reachable (test)"))
    at = AppTest.from_file(str(REPO / "app_pages" / "admin.py"), default_timeout=60)
    at.secrets = {"unrelated": "x"}  # never a developer's real secrets.toml
    at.run()
    at.text_input(key="admin_password_input").input("correct horse battery staple")
    at = next(b for b in at.button if b.label == "Sign in").click().run()
    assert not at.exception, at.exception
    widgets = {w.label: w for w in [*at.number_input, *at.slider] if w.label in FORM_LABELS}
    assert set(widgets) == set(FORM_LABELS)
    for label, field in FORM_LABELS.items():
        lim, w = form_limits(field), widgets[label]
        assert (w.min, w.max) == (lim["min_value"], lim["max_value"]), field
        assert w.step == pytest.approx(lim.get("step", 1)), field
        assert w.value == getattr(Config(), field), field
