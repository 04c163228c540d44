"""A real Orthanc PACS for the tests (issue 24): started on free local ports with a temporary
storage folder and the DICOMweb plugin, loaded with test studies, stopped afterwards.

Debian's packages `orthanc` and `orthanc-dicomweb` provide it (``.ci/run`` installs them);
where they are missing the tests that need it skip with that reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def upload(url: str, data: bytes, auth: tuple[str, str] | None = None) -> dict:
    import requests

    r = requests.post(f"{url}/instances", data=data, auth=auth, timeout=30)
    r.raise_for_status()
    return r.json()


def instances(url: str, auth=None) -> list[dict]:
    import requests

    return requests.get(f"{url}/instances?expand", auth=auth, timeout=30).json()


# --- test studies: the bundled samples wrapped as DICOM with realistic tags -------------------
def film(path: Path, *, study_uid: str, patient_id: str, patient_name: str, view: str | None, modality: str = "DX",
         study_date: str = "20261201", study_time: str = "101500", accession: str = "", body: str = "CHEST",
         frames: int = 1, series_number: int = 1, instance_number: int = 1, pixels: np.ndarray | None = None) -> bytes:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    g = pixels if pixels is not None else cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    sop_class = {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "CR": "1.2.840.10008.5.1.4.1.1.1",
                 "CT": "1.2.840.10008.5.1.4.1.1.2"}[modality]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_name, "20210314", "M"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = study_date, study_time, accession, "1"
    ds.StudyDescription, ds.ReferringPhysicianName = "XR CHEST", "SMITH^ANNA"
    ds.Modality, ds.BodyPartExamined = modality, body
    if view is not None:
        ds.ViewPosition = view
    ds.SeriesNumber, ds.InstanceNumber = series_number, instance_number
    ds.Rows, ds.Columns = g.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.PixelData = np.repeat(g[None], frames, axis=0).tobytes()
    else:
        ds.PixelData = g.tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def pneumonia_film() -> Path:
    return SAMPLES / "PNEUMONIA" / "person36_virus_81.jpeg"


def normal_film() -> Path:
    return SAMPLES / "NORMAL" / "IM-0041-0001.jpeg"
