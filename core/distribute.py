"""tf.distribute for training (issue 25): one strategy per process, created first; who is chief;
a lost worker turned into one clear error.

TensorFlow configures collective ops (``MultiWorkerMirroredStrategy``) and logical devices when
its runtime starts, i.e. at the first operation it runs: building a model, seeding, decoding
data. :func:`get_strategy` must therefore run **before** anything else in the process touches
TensorFlow; ``python -m core train`` calls it first thing (``core.cli.cmd_train``) and
``core.training.train`` calls it again first thing (the same object comes back), so the job
process (``core.job_runner``) gets it right too. Strategies:

* ``default`` -- no distribution (TensorFlow's default strategy);
* ``mirrored`` -- ``MirroredStrategy`` over all local GPUs; on a machine without GPUs, over the
  logical CPU devices ``PNEUMOSCOPE_LOGICAL_CPUS=N`` asks for (N >= 2 gives a real all-reduce
  between N replicas on one CPU: what the tests use);
* ``multiworker`` -- ``MultiWorkerMirroredStrategy``: one process per machine, the cluster and
  this process's place in it read from ``TF_CONFIG``. Every collective (gradient all-reduce,
  metric reduction) gives up after ``PNEUMOSCOPE_COLLECTIVE_TIMEOUT_S`` seconds (default 600):
  together with TensorFlow's heartbeats (a dead peer is noticed within ~10 s) a worker that is
  killed, crashes or hangs stops the others with :class:`DistributedTrainingError` instead of
  leaving them waiting forever.

Data (``core.training._fit``): the global batch is ``Config.batch_size`` (the recipe of a
single-process run: same steps per epoch, same learning-rate schedule), split evenly between the
replicas; training batches are sharded between workers element-wise (:data:`SHARD`,
``AutoShardPolicy.DATA``: every worker holds the decoded arrays and computes its part of every
batch; gradients are all-reduced). Keras 3 would report a validation metric as the mean of the
replicas' values (an AUC of AUCs), so every worker scores the *whole* validation set itself at
each epoch end, without the strategy: the same numbers everywhere, hence the same early stopping
and best-weight choices. Phase 1's cached base features are likewise computed by every worker
for all images (a frozen base is the same everywhere; no gather to order); the head is then
trained on them under the strategy.

Only the chief (:func:`is_chief`: task ``chief``, else ``worker`` 0) calibrates, evaluates,
publishes and writes the audit trail; the other workers train and exit.
"""

from __future__ import annotations

import json
import logging
import os
import re
from contextlib import contextmanager

from core.config import STRATEGIES

log = logging.getLogger(__name__)

LOGICAL_CPUS_ENV = "PNEUMOSCOPE_LOGICAL_CPUS"
COLLECTIVE_TIMEOUT_ENV = "PNEUMOSCOPE_COLLECTIVE_TIMEOUT_S"
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0
SHARD, NO_SHARD = "data", "off"

_created: dict[str, object] = {}


class DistributedTrainingError(RuntimeError):
    """A worker of a distributed training was lost: killed, crashed, or silent past the
    collective timeout. Nothing is published."""


def _env_number(name: str, default: float, cast=float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise ValueError(f"{name} must be a positive number. Received: {name}={raw!r}")
    return value


def configure_logical_cpus() -> int:
    """Split the CPU into ``PNEUMOSCOPE_LOGICAL_CPUS`` logical devices (unset or 1: no split).
    Must run before TensorFlow's first operation; returns the number of CPU devices asked for."""
    n = int(_env_number(LOGICAL_CPUS_ENV, 1, int))
    if n < 2:
        return 1
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:  # "Virtual devices cannot be modified after being initialized"
        if len(tf.config.list_logical_devices("CPU")) != n:
            raise ValueError(f"{LOGICAL_CPUS_ENV}={n} must be applied before TensorFlow runs anything (set it in the "
                             f"environment of a fresh process). Received: {e}") from None
    return n


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        log.warning("strategy 'multiworker' without TF_CONFIG: training as a single worker")
        return {}
    try:
        cfg = json.loads(raw)
        task, cluster = cfg["task"], cfg["cluster"]
        if task["type"] not in cluster or int(task["index"]) >= len(cluster[task["type"]]):
            raise KeyError("task")
    except (ValueError, KeyError, TypeError):
        raise ValueError('TF_CONFIG must be JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                         '"task": {"type": "worker", "index": 0}}, with the task listed in the cluster. '
                         f"Received: TF_CONFIG={raw!r}") from None
    return cfg


def get_strategy(name: str):
    """The process's tf.distribute strategy for ``Config.strategy`` (created on the first call,
    the same object afterwards). Call it before TensorFlow runs anything."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name in _created:
        return _created[name]
    check_keras_version()
    n_cpus = configure_logical_cpus()
    try:
        if name == "mirrored":
            # No GPU: the logical CPUs (one replica each), else MirroredStrategy's own pick (all GPUs).
            no_gpu = not tf.config.list_physical_devices("GPU")
            devices = [f"/cpu:{i}" for i in range(n_cpus)] if no_gpu and n_cpus > 1 else None
            strategy = tf.distribute.MirroredStrategy(devices=devices)
            _patch_keras_trainer()
        else:
            _tf_config()
            timeout = _env_number(COLLECTIVE_TIMEOUT_ENV, DEFAULT_COLLECTIVE_TIMEOUT_S)
            options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
            strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
            _patch_keras_trainer()
    except RuntimeError as e:
        if "program startup" in str(e) or "initialized" in str(e):
            raise ValueError(f"strategy {name!r} must be created before TensorFlow runs anything in this process: "
                             "start training with 'python -m core train' (or call core.distribute.get_strategy first). "
                             f"Received: {e}") from None
        raise
    _created[name] = strategy
    log.info("strategy %s: %d replica(s) in sync, %s", name, strategy.num_replicas_in_sync, describe(strategy))
    return strategy


def _cluster(strategy) -> tuple[dict, str | None, int | None]:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return {}, None, None
    return resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id


def is_chief(strategy=None) -> bool:
    """Whether this process does what only one process of a training may do: calibrate,
    evaluate, publish, write the audit trail. True without a multi-worker cluster; else the
    task ``chief``, or ``worker`` 0 when the cluster has no ``chief``."""
    spec, task_type, task_id = _cluster(strategy)
    if not spec or task_type is None:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in spec


def num_workers(strategy=None) -> int:
    spec, _, _ = _cluster(strategy)
    return max(1, len(spec.get("chief", [])) + len(spec.get("worker", [])))


def _task_name(spec: dict, task_type: str, task_id: int) -> str:
    hosts = spec.get(task_type) or []
    where = f" ({hosts[task_id]})" if 0 <= task_id < len(hosts) else ""
    return f"{task_type} {task_id}{where}"


def describe(strategy=None) -> str:
    """``"worker 1 (10.0.0.2:12345) of 2 workers"``, or ``"single process"``."""
    spec, task_type, task_id = _cluster(strategy)
    if not spec or task_type is None:
        return "single process"
    return f"{_task_name(spec, task_type, task_id)} of {num_workers(strategy)} workers"


def distributed(strategy) -> bool:
    """More than one replica: batches are split and gradients all-reduced."""
    return strategy is not None and strategy.num_replicas_in_sync > 1


def with_sharding(dataset, policy: str):
    """``dataset`` with the auto-shard policy :data:`SHARD` (each worker its part of every
    batch) or :data:`NO_SHARD` (every worker sees everything)."""
    import tensorflow as tf

    options = tf.data.Options()
    auto = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = auto.DATA if policy == SHARD else auto.OFF
    return dataset.with_options(options)


def _lost_peers(text: str, spec: dict, me: tuple) -> list[str]:
    """The tasks a TensorFlow error names as unhealthy, else every task but this one."""
    tail = text.split("unhealthy", 1)[1] if "unhealthy" in text else ""
    named = {(t, int(i)) for t, i in re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", tail)}
    peers = named or {(t, i) for t, hosts in spec.items() for i in range(len(hosts))} - {me}
    return [_task_name(spec, t, i) for t, i in sorted(peers)]


def peer_lost(exc: BaseException, strategy) -> DistributedTrainingError | None:
    """The clear error for ``exc`` when it means a lost worker (TensorFlow's Unavailable /
    DeadlineExceeded / Aborted collective errors in a multi-worker run), else None."""
    spec, task_type, task_id = _cluster(strategy)
    if not spec or task_type is None:
        return None
    import tensorflow as tf

    if not isinstance(exc, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                            tf.errors.CancelledError)):
        return None
    text = str(exc)
    lost = ", ".join(_lost_peers(text, spec, (task_type, task_id)))
    if isinstance(exc, tf.errors.DeadlineExceededError) or "timed out" in text:
        why = (f"no answer within the collective timeout of {_env_number(COLLECTIVE_TIMEOUT_ENV, DEFAULT_COLLECTIVE_TIMEOUT_S):g} s "
               f"({COLLECTIVE_TIMEOUT_ENV})")
    else:
        why = "it stopped answering (killed or crashed)"
    return DistributedTrainingError(
        f"Distributed training stopped on {_task_name(spec, task_type, task_id)}: lost {lost}: {why}. Nothing was "
        "published; see that worker's output, then start the training again on every machine.")


@contextmanager
def peer_errors(strategy):
    """Turns a lost-worker TensorFlow error raised inside into :class:`DistributedTrainingError`."""
    try:
        yield
    except Exception as e:
        clear = peer_lost(e, strategy)
        if clear is None:
            raise
        log.info("%s (TensorFlow: %s)", clear, str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise clear from None


_patched = False
KERAS_PATCHED_FOR = "3.15."  # the Keras release the two trainer patches below were written and tested for


def check_keras_version() -> None:
    """Refuse (before any strategy exists) a Keras other than the one the trainer patches are for."""
    import keras

    if not keras.__version__.startswith(KERAS_PATCHED_FOR):
        raise DistributedTrainingError(
            f"Distributed training was checked with Keras {KERAS_PATCHED_FOR}x only (it patches two private "
            f"functions of Keras' TensorFlow trainer). Received: keras=={keras.__version__}; install the version "
            f"in requirements.txt, or train with --strategy default.")


def _patch_keras_trainer() -> None:
    """Two fixes to Keras 3's TensorFlow trainer (3.15) under tf.distribute:

    * ``fit``/``evaluate`` build the model from a first batch averaged over the replicas with
      ``strategy.reduce("MEAN", batch)``, which fails when the replicas' parts differ in size
      (MirroredStrategy: "Inputs to operation AddN ... must have the same size") or live on other
      workers (MultiWorkerMirroredStrategy: "Attempt to convert a value (PerReplica...)"): build
      from the first local replica's part instead (only shapes and dtypes are used);
    * MultiWorkerMirroredStrategy only: the step's logs (scalar losses and metrics) are reduced with ``reduce("MEAN", axis=0)``,
      which has no axis 0 for a scalar (ValueError "Invalid reduction dimension 0"): reduce
      them with ``axis=None`` (the mean over all replicas of all workers). Known upstream as
      tensorflow/tensorflow#72388 (Keras 3 with tf.distribute; the reporters' workaround was Keras 2).

    Both replace private Keras functions: requirements.txt pins Keras (``KERAS_PATCHED_FOR``), the
    slow tests run a real all-reduce and two real workers through them (tests/test_distributed.py),
    and another Keras version is refused here with the reason rather than trained on silently.
    """
    global _patched
    if _patched:
        return
    import tensorflow as tf

    check_keras_version()
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    def local(v, strategy):
        return strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(lambda v: local(v, self.distribute_strategy), next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_per_replica
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    _patched = True
