"""tests/conftest.py: the test harness's own fixtures (where the full dataset is looked for)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_full_data_tests_honour_pneumoscope_data_root(tmp_path):
    missing = tmp_path / "no-dataset-here"
    env = dict(os.environ, PNEUMOSCOPE_DATA_ROOT=str(missing))
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-m", "data", "-p", "no:cacheprovider", "tests/test_full_data.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert f"full dataset not found at {missing}" in r.stdout, r.stdout[-2000:]


@pytest.mark.drops_audit_fields
def test_the_allow_list_guard_sees_a_dropped_field(tmp_path):
    """conftest's autouse guard fails any test whose audit call loses a field: its handler sees it."""
    import logging

    from conftest import _AuditDrops
    from core import audit

    guard = _AuditDrops()
    logging.getLogger("core.audit").addHandler(guard)
    try:
        audit.append("predict", artifacts=tmp_path, model_version="v1", PatientName="Doe^Jane")
        audit.append("predict", artifacts=tmp_path, model_version="v1")
    finally:
        logging.getLogger("core.audit").removeHandler(guard)
    assert len(guard.messages) == 1 and "'PatientName'" in guard.messages[0]
