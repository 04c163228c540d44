"""Distributed training (issue 25 item 1): ``--strategy mirrored`` with two logical CPU devices and
``--strategy multiworker`` with two local worker processes, on the micro backbone at 32 px.

Each test starts fresh ``python -m core train`` processes: TensorFlow's collective ops and
logical devices can only be configured before its first operation, which the pytest process
has long passed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import free_port

REPO = Path(__file__).resolve().parent.parent
SAMPLE_ROOT = REPO / "samples" / "chest_xray"
TINY = {"backbone": "micro", "input_size": 32, "weights": "none", "head_units": 8, "head_epochs": 1,
        "finetune_epochs": 1, "batch_size": 8, "val_fraction": 0.3, "early_stopping_patience": 3, "seed": 0}

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**TINY, **changes}))
    return path


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "PNEUMOSCOPE_LOGICAL_CPUS")}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def _train(art: Path, cfg: Path, strategy: str, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "core", "--artifacts", str(art), "train", "--config", str(cfg),
           "--strategy", strategy, "--data-root", str(SAMPLE_ROOT)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})


def _versions(art: Path) -> list[str]:
    from core.registry import Registry

    return [v.name for v in Registry(art).versions()]


def _training_lines(art: Path) -> list[dict]:
    from core import audit

    return audit.read(artifacts=art, actions=["retrain"]) if art.exists() else []


def test_mirrored_two_logical_cpus_all_reduce(tmp_path):
    art = tmp_path / "art"
    proc = _train(art, _config(tmp_path), "mirrored", _env(PNEUMOSCOPE_LOGICAL_CPUS="2"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    versions = _versions(art)
    assert len(versions) == 1
    from core.registry import Registry

    prov = Registry(art).read_json(versions[0], "provenance.json")
    assert prov["strategy"] == "mirrored"
    assert prov["replicas"] == {"in_sync": 2, "workers": 1}  # two replicas: gradients were all-reduced
    assert json.loads(out)["version"] == versions[0]


def test_multiworker_two_local_workers_publish_once(tmp_path):
    art = tmp_path / "art"
    cfg = _config(tmp_path)
    ports = [free_port(), free_port()]
    procs = [_train(art, cfg, "multiworker", _env(TF_CONFIG=_tf_config(ports, i))) for i in range(2)]
    outs = [p.communicate(timeout=150) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert json.loads(outs[1][0]) == {"worker": f"worker 1 (127.0.0.1:{ports[1]}) of 2 workers", "published": None}
    versions = _versions(art)
    assert len(versions) == 1 and json.loads(outs[0][0])["version"] == versions[0]
    from core.registry import Registry

    assert Registry(art).read_json(versions[0], "provenance.json")["replicas"] == {"in_sync": 2, "workers": 2}
    lines = _training_lines(art)
    assert [ln.get("outcome") for ln in lines] == ["started", "succeeded"], lines


def test_multiworker_killed_worker_stops_the_other(tmp_path):
    art = tmp_path / "art"
    # Enough epochs that the kill lands mid-training; a short collective timeout as a backstop.
    cfg = _config(tmp_path, head_epochs=200, finetune_epochs=200, early_stopping_patience=1000)
    ports = [free_port(), free_port()]
    env = {"PNEUMOSCOPE_COLLECTIVE_TIMEOUT_S": "30"}
    procs = [_train(art, cfg, "multiworker", _env(TF_CONFIG=_tf_config(ports, i), **env)) for i in range(2)]
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not _training_lines(art):
            time.sleep(0.5)
        time.sleep(8)  # into the epochs
        assert procs[1].poll() is None, "worker 1 ended before it could be killed"
        procs[1].send_signal(signal.SIGKILL)
        _, err = procs[0].communicate(timeout=90)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode != 0
    assert f"lost worker 1 (127.0.0.1:{ports[1]})" in err and "Nothing was published" in err, err[-3000:]
    assert "Traceback" not in err, err[-4000:]
    assert _versions(art) == []
    assert [ln.get("outcome") for ln in _training_lines(art)] == ["started", "failed"]
