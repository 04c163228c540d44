"""Shared fixtures: tiny configs (32 px, weights=None) and the committed real sample."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Each test's artifacts root gets its own embedded database; a deployment's PostgreSQL named in the
# developer's environment must never receive test rows (tests that want one set it themselves).
os.environ.pop("PNEUMOSCOPE_DATABASE_URL", None)

import pytest  # noqa: E402
from tests.helpers import copy_artifacts

REPO = Path(__file__).resolve().parent.parent
SAMPLE_ROOT = REPO / "samples" / "chest_xray"
# Full-data tests (marked `data`) use $PNEUMOSCOPE_DATA_ROOT when set, else ../shared/data/chest_xray.
FULL_DATA_ROOT = Path(os.environ.get("PNEUMOSCOPE_DATA_ROOT") or REPO.parent / "shared" / "data" / "chest_xray").expanduser()


def pytest_collection_modifyitems(config, items):
    if FULL_DATA_ROOT.is_dir():
        return
    skip = pytest.mark.skip(reason=f"full dataset not found at {FULL_DATA_ROOT}")
    for item in items:
        if "data" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sample_root() -> Path:
    return SAMPLE_ROOT


@pytest.fixture(scope="session")
def full_data_root() -> Path:
    return FULL_DATA_ROOT


@pytest.fixture()
def tiny_config():
    from core.config import Config

    return Config(
        backbone="micro", input_size=32, weights="none", head_units=8, head_epochs=2, finetune_epochs=1,
        batch_size=8, val_fraction=0.3, early_stopping_patience=3, seed=0,
    )


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory):
    """A registry with one tiny model trained on the committed sample (shared, read-only)."""
    from core.config import Config
    from core.registry import Registry
    from core.publish import publish
    from core.training import train

    root = tmp_path_factory.mktemp("registry")
    reg = Registry(root)
    cfg = Config(backbone="micro", input_size=32, weights="none", head_units=8, head_epochs=2, finetune_epochs=1,
                 batch_size=8, val_fraction=0.3, early_stopping_patience=3, seed=0)
    result = train(cfg, SAMPLE_ROOT, n_bootstrap=50)
    publish(result, reg, "v0001-tiny", activate=True)
    return reg


@pytest.fixture()
def registry_copy(trained_registry, tmp_path):
    """A writable copy of the tiny trained registry."""
    from core.registry import Registry

    dst = tmp_path / "artifacts"
    copy_artifacts(trained_registry.root, dst)
    return Registry(dst)


class _AuditDrops(__import__("logging").Handler):
    """Collects core.audit's "dropped fields that are not allow-listed" warnings."""

    def __init__(self):
        super().__init__(level=30)
        self.messages: list[str] = []

    def emit(self, record):
        if "dropped fields that are not allow-listed" in record.getMessage():
            self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def _every_audited_field_is_allow_listed(request):
    """Whatever the project audits in any test keeps every field it passes: a field the allow-list
    would drop (core.audit.ALLOWED_FIELDS) fails the test that exercised the call. tests/test_audit.py
    drops identifiers on purpose and checks that itself."""
    import logging

    if request.node.path.name == "test_audit.py" or request.node.get_closest_marker("drops_audit_fields"):
        yield
        return
    handler = _AuditDrops()
    logger = logging.getLogger("core.audit")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, handler.messages
