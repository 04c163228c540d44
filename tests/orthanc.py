"""A real Orthanc PACS for the tests (issue 24): started on free local ports with a temporary
storage folder and the DICOMweb plugin, loaded with test studies, stopped afterwards.

Debian's packages `orthanc` and `orthanc-dicomweb` provide it (``.ci/run`` installs them);
where they are missing the tests that need it skip with that reason.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import free_port, stop_server

REPO = Path(__file__).resolve().parent.parent
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
SAMPLES = REPO / "samples" / "chest_xray" / "test"


def dicomweb_plugin() -> str | None:
    for d in PLUGIN_DIRS:
        for p in sorted(Path(d).glob("libOrthancDicomWeb.so*")) if Path(d).is_dir() else []:
            return str(p)
    return None


def require_orthanc() -> None:
    if not Path(ORTHANC).exists():
        pytest.skip("Orthanc is not installed (apt-get install -y orthanc orthanc-dicomweb; .ci/run does it)")
    if dicomweb_plugin() is None:
        pytest.skip("Orthanc's DICOMweb plugin is not installed (apt-get install -y orthanc-dicomweb)")


@contextlib.contextmanager
def orthanc_server(tmp: Path, *, users: dict[str, str] | None = None):
    """Yields ``{"url": http://127.0.0.1:P, "dicomweb": .../dicom-web, "proc": Popen}``."""
    require_orthanc()
    http, dicom = free_port(), free_port()
    storage = tmp / "orthanc-db"
    storage.mkdir(parents=True, exist_ok=True)
    cfg = {
        "Name": "PNEUMOSCOPE-TEST", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "HttpPort": http, "DicomPort": dicom, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users), "RegisteredUsers": users or {},
        "Plugins": [dicomweb_plugin()], "HttpTimeout": 10, "StableAge": 1,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }
    cfg_path = tmp / "orthanc.json"
    cfg_path.write_text(json.dumps(cfg))
    log = open(tmp / "orthanc.log", "w")
    proc = subprocess.Popen([ORTHANC, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with code {proc.returncode}: {(tmp / 'orthanc.log').read_text()[-2000:]}")
            try:
                req = urllib.request.Request(url + "/system")
                if users:
                    import base64

                    user, pw = next(iter(users.items()))
                    req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
                with urllib.request.urlopen(req, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Orthanc did not answer /system within 30 s")
            time.sleep(0.2)
        yield {"url": url, "dicomweb": url + "/dicom-web", "proc": proc, "log": tmp / "orthanc.log"}
    finally:
        stop_server(proc)
        log.close()


def upload(url: str, data: bytes, auth: tuple[str, str] | None = None) -> dict:
    import requests

    r = requests.post(f"{url}/instances", data=data, auth=auth, timeout=30)
    r.raise_for_status()
    return r.json()


def instances(url: str, auth=None) -> list[dict]:
    import requests

    return requests.get(f"{url}/instances?expand", auth=auth, timeout=30).json()


# --- test studies: the bundled samples wrapped as DICOM with realistic tags (tools/pacs_demo.py) --
from tools.pacs_demo import film, new_uid  # noqa: E402,F401 - one wrapper for the demo and the tests


def pneumonia_film() -> Path:
    return SAMPLES / "PNEUMONIA" / "person36_virus_81.jpeg"


def normal_film() -> Path:
    return SAMPLES / "NORMAL" / "IM-0041-0001.jpeg"
