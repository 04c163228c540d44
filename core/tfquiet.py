"""Import TensorFlow without its start-up noise, keeping its real errors (the app server).

``streamlit run`` printed, at the first model load of every server start, TensorFlow's start-up
lines -- absl's "All log messages before absl::InitializeLog()", the oneDNN notice, "Could not
find cuda drivers", the CPU-instructions notice -- and an E-level ``failed call to cuInit`` line
on a machine without a GPU (issue 22 item 11). The CLI silences them with
``TF_CPP_MIN_LOG_LEVEL=3`` (``core.cli._quiet_tf``), which also hides TensorFlow's C++ errors for
the whole process; a server runs for weeks, so here:

* ``TF_CPP_MIN_LOG_LEVEL`` defaults to 1 (C++ INFO lines dropped; warnings and errors still
  shown for the life of the server), unless the environment sets it;
* while TensorFlow is imported and its devices are initialised (where CUDA logs the cuInit
  failure), file descriptor 2 is captured into a temporary file; afterwards every captured line
  that is not known start-up noise (:func:`is_noise`) is written back to stderr -- an import
  error, a real CUDA error on a machine that has an NVIDIA GPU, or a line another thread logged
  meanwhile (delayed by the second or two the import takes, never lost).

``PNEUMOSCOPE_TF_VERBOSE=1`` shows everything, as the CLI's ``-v`` does. No Streamlit here.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading

VERBOSE_ENV = "PNEUMOSCOPE_TF_VERBOSE"

# Lines TensorFlow, CUDA and absl print while TensorFlow loads on a machine with or without a GPU.
_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations|TF_ENABLE_ONEDNN_OPTS|"
    r"cudart_stub|Could not find cuda drivers|GPU will not be used|cpu_feature_guard|"
    r"This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate|"
    r"Unable to register cu(?:DNN|FFT|BLAS) factory|computation_placer|TF-TRT Warning|"
    r"Attempting to register factory for plugin"
)
# The cuInit failure is noise only where there is no NVIDIA GPU to initialise.
_CUINIT = re.compile(r"failed call to cuInit")
_GLOG_INFO = re.compile(r"^I\d{4} \d\d:\d\d:\d\d")
_lock = threading.Lock()


def has_nvidia_device() -> bool:
    """True when the NVIDIA driver's device files exist (a GPU that CUDA should initialise)."""
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version"))


def is_noise(line: str, gpu_present: bool | None = None) -> bool:
    """Whether one stderr line is TensorFlow start-up noise (never an error a person must see):
    the known notices, C++ INFO lines, and the cuInit failure on a machine without an NVIDIA GPU."""
    if not line.strip():
        return True
    if _NOISE.search(line) or _GLOG_INFO.match(line):
        return True
    if _CUINIT.search(line):
        return not (has_nvidia_device() if gpu_present is None else gpu_present)
    return False


def import_tensorflow(verbose: bool | None = None):
    """``import tensorflow`` (and its device initialisation) with the start-up noise filtered out
    of stderr; real errors are written back. Idempotent; returns the module. ``verbose`` (default:
    ``$PNEUMOSCOPE_TF_VERBOSE == "1"``) imports it plainly."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if verbose is None:
        verbose = os.environ.get(VERBOSE_ENV) == "1"
    if verbose:
        import tensorflow

        return tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    with _lock:
        if "tensorflow" in sys.modules:  # another thread won the race
            return sys.modules["tensorflow"]
        with tempfile.TemporaryFile() as captured:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(captured.fileno(), 2)
            try:
                import tensorflow

                try:
                    tensorflow.config.list_physical_devices()  # device init: where cuInit is logged
                except Exception:  # noqa: BLE001 - a device problem shows when the model runs
                    pass
            finally:
                try:
                    sys.stderr.flush()
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                    captured.seek(0)
                    text = captured.read().decode("utf-8", "replace")
                    kept = [ln for ln in text.splitlines() if not is_noise(ln)]
                    if kept:
                        sys.stderr.write("\n".join(kept) + "\n")
                        sys.stderr.flush()
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)
    return tensorflow


__all__ = ["VERBOSE_ENV", "has_nvidia_device", "import_tensorflow", "is_noise"]
