"""Tests for core.config: round trips, validation messages, defaults from the environment."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core import config as config_mod
from core.config import (
    BACKBONES,
    PRECISIONS,
    STRATEGIES,
    THRESHOLD_POLICIES,
    Config,
    default_artifacts_dir,
    default_data_root,
)


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
