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



# --- fast: the helpers --------------------------------------------------------------------------
class _Resolver:
    def __init__(self, spec, task_type, task_id):
        self.spec, self.task_type, self.task_id = spec, task_type, task_id

    def cluster_spec(self):
        return type("Spec", (), {"as_dict": lambda _self: self.spec})()


class _Strategy:
    def __init__(self, spec=None, task_type=None, task_id=None):
        self.cluster_resolver = _Resolver(spec or {}, task_type, task_id) if spec else None
        self.num_replicas_in_sync = 2


WORKERS = {"worker": ["10.0.0.1:1", "10.0.0.2:1"]}


@pytest.mark.parametrize(("spec", "task", "chief"), [
    (None, (None, None), True),  # single process
    (WORKERS, ("worker", 0), True),
    (WORKERS, ("worker", 1), False),
    ({"chief": ["c:1"], **WORKERS}, ("worker", 0), False),
    ({"chief": ["c:1"], **WORKERS}, ("chief", 0), True),
])
def test_is_chief(spec, task, chief):
    from core.distribute import is_chief

    assert is_chief(_Strategy(spec, *task)) is chief


def test_bad_tf_config_is_a_clear_error(monkeypatch):
    from core import distribute

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}')
    with pytest.raises(ValueError, match="TF_CONFIG must be JSON like .* Received: TF_CONFIG="):
        distribute._tf_config()
    monkeypatch.setenv("PNEUMOSCOPE_LOGICAL_CPUS", "two")
    with pytest.raises(ValueError, match="PNEUMOSCOPE_LOGICAL_CPUS must be a positive number"):
        distribute.configure_logical_cpus()
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.get_strategy("horovod")


@pytest.mark.parametrize("name", ["mirrored", "multiworker"])
def test_another_keras_is_refused_before_any_strategy_exists(monkeypatch, name):
    """The trainer patches replace private Keras functions: a Keras they were not written for is
    refused with the reason, before a strategy (or TensorFlow's runtime) is set up."""
    import keras

    from core import distribute

    monkeypatch.setattr(keras, "__version__", "3.99.0")
    monkeypatch.setattr(distribute, "configure_logical_cpus", lambda: pytest.fail("got past the version check"))
    with pytest.raises(distribute.DistributedTrainingError, match=r"Keras 3\.15\.x only.*Received: keras==3\.99\.0.*--strategy default"):
        distribute.get_strategy(name)
    assert name not in distribute._created
    assert keras.__version__ == "3.99.0" and distribute.get_strategy("default") is not None  # no distribution: no patch, no check


def test_lost_peer_message_names_the_worker():
    import tensorflow as tf

    from core.distribute import DistributedTrainingError, peer_lost

    strategy = _Strategy(WORKERS, "worker", 0)
    err = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: The following tasks are unhealthy "
                                                 "(stopped sending heartbeats):\n/job:worker/replica:0/task:1\n")
    clear = peer_lost(err, strategy)
    assert isinstance(clear, DistributedTrainingError)
    assert "on worker 0 (10.0.0.1:1): lost worker 1 (10.0.0.2:1): it stopped answering" in str(clear)
    assert "Nothing was published" in str(clear)
    timeout = peer_lost(tf.errors.DeadlineExceededError(None, None, "Collective has timed out"), strategy)
    assert "lost worker 1 (10.0.0.2:1): no answer within the collective timeout" in str(timeout)
    assert peer_lost(ValueError("x"), strategy) is None
    assert peer_lost(err, _Strategy()) is None  # not multi-worker: left alone


# --- slow: real trainings in fresh processes ----------------------------------------------------
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert procs[0].returncode == 1  # EXIT_ERROR
    assert f"lost worker 1 (127.0.0.1:{ports[1]})" in err and "Nothing was published" in err, err[-3000:]
    assert "Traceback" not in err, err[-4000:]
    assert _versions(art) == []
    assert [ln.get("outcome") for ln in _training_lines(art)] == ["started", "failed"]
