"""core.tfquiet: TensorFlow's start-up noise is filtered out of the server's stderr, real errors are
kept (issue 22 item 11)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core import tfquiet

REPO = Path(__file__).resolve().parent.parent

# What TensorFlow 2.21 printed at the first model load of `streamlit run` on a machine without a GPU.
STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796456869.149042    1750 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796456869.149893    1750 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796456869.224273    1750 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX512_FP16 AVX_VNNI AMX_TILE AMX_INT8 AMX_BF16 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
E0000 00:00:1796456873.216182    1750 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
"""  # noqa: E501 - the lines as printed
REAL_ERROR = "E0000 00:00:1796456873.3    1750 op_kernel.cc:1857] OP_REQUIRES failed at conv_ops.cc:12 : RESOURCE_EXHAUSTED"


def test_start_up_lines_are_noise_and_errors_are_not():
    assert all(tfquiet.is_noise(line, gpu_present=False) for line in STARTUP.splitlines())
    assert not tfquiet.is_noise(REAL_ERROR, gpu_present=False)
    assert not tfquiet.is_noise("Traceback (most recent call last):")
    assert not tfquiet.is_noise("ImportError: libcudart.so.12: cannot open shared object file")
    # On a machine with an NVIDIA GPU a failed cuInit is a real problem: shown.
    cuinit = STARTUP.splitlines()[-1]
    assert not tfquiet.is_noise(cuinit, gpu_present=True)


def _fake_tensorflow(tmp_path: Path, extra: str = "") -> Path:
    """A stand-in 'tensorflow' package that writes the start-up lines (and ``extra``) to fd 2, as
    the C++ libraries do, at import and at device initialisation."""
    pkg = tmp_path / "fake" / "tensorflow"
    pkg.mkdir(parents=True)
    head, tail = STARTUP.rsplit("E0000", 1)
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        import os, types
        os.write(2, {head.encode()!r} + {extra.encode()!r})
        def _devices():
            os.write(2, {('E0000' + tail).encode()!r})
            return []
        config = types.SimpleNamespace(list_physical_devices=_devices)
    """))
    return tmp_path / "fake"


def _run(code: str, path: Path, **env) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP", "PNEUMOSCOPE_TF"))},
           "PYTHONPATH": os.pathsep.join([str(path), str(REPO)]), **env}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


CODE = ("import os, sys; from core import tfquiet; tfquiet.import_tensorflow(); "
        "print(os.environ['TF_CPP_MIN_LOG_LEVEL']); print('after', file=sys.stderr)")


def test_import_filters_the_noise_and_writes_real_errors_back(tmp_path):
    fake = _fake_tensorflow(tmp_path, extra=REAL_ERROR + "\n")
    r = _run(CODE, fake)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert REAL_ERROR in lines and "after" in lines  # the error, then stderr works as before
    assert not any("oneDNN" in ln or "cuInit" in ln or "absl::InitializeLog" in ln for ln in lines), r.stderr
    assert r.stdout.strip() == "1"  # C++ INFO lines dropped, warnings and errors still shown later


def test_verbose_and_an_explicit_log_level_are_respected(tmp_path):
    fake = _fake_tensorflow(tmp_path)
    r = _run(CODE, fake, PNEUMOSCOPE_TF_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="0")
    assert "oneDNN custom operations" in r.stderr and r.stdout.strip() == "0"


def test_an_import_error_is_shown(tmp_path):
    pkg = tmp_path / "broken" / "tensorflow"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("import os\nos.write(2, b'fatal: libtensorflow missing\\n')\nraise ImportError('no TF')\n")
    r = _run("from core import tfquiet; tfquiet.import_tensorflow()", tmp_path / "broken")
    assert r.returncode != 0 and "fatal: libtensorflow missing" in r.stderr and "ImportError: no TF" in r.stderr


@pytest.mark.slow
def test_the_real_tensorflow_starts_silently_on_a_machine_without_gpu():
    if tfquiet.has_nvidia_device():
        pytest.skip("this machine has an NVIDIA GPU: its start-up lines differ")
    r = _run("from core import tfquiet; tf = tfquiet.import_tensorflow(); print(tf.constant(2).numpy() + 1)", REPO)
    assert r.returncode == 0 and r.stdout.strip() == "3"
    assert r.stderr.strip() == "", r.stderr
