#!/usr/bin/env python
"""Load demo studies into a PACS for the worklist (issue 24): the bundled sample films wrapped
as DICOM with realistic, invented tags (one study per film, a lateral view added to some, one
CT study that the worklist must leave out), sent with STOW-RS.

    Orthanc deploy/orthanc/orthanc.json &          # a demo PACS (README, section "PACS")
    python tools/pacs_demo.py http://127.0.0.1:8042/dicom-web

Patient names and IDs are invented (DEMO-001 ...); the films are Kermany et al. 2018 (CC BY 4.0).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SAMPLES = REPO / "samples" / "chest_xray" / "test"
SOP_CLASSES = {"DX": "1.2.840.10008.5.1.4.1.1.1.1", "CR": "1.2.840.10008.5.1.4.1.1.1", "CT": "1.2.840.10008.5.1.4.1.1.2"}


def new_uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def film(path: Path | None, *, study_uid: str, patient_id: str, patient_name: str, view: str | None,
         modality: str = "DX", study_date: str = "20261201", study_time: str = "101500", accession: str = "",
         body: str = "CHEST", frames: int = 1, series_number: int = 1, instance_number: int = 1,
         pixels: np.ndarray | None = None, birth_date: str = "20210314") -> bytes:
    """A DICOM file (Explicit VR LE, 8-bit grey) of the film at ``path`` (or ``pixels``)."""
    import cv2
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    g = pixels if pixels is not None else cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SOP_CLASSES[modality]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = new_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, new_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_name, birth_date, "M"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = study_date, study_time, accession, "1"
    ds.StudyDescription, ds.ReferringPhysicianName = ("XR CHEST" if modality != "CT" else "CT THORAX"), "SMITH^ANNA"
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


def demo_studies(today: dt.date | None = None) -> list[list[bytes]]:
    """One study per bundled test film (the last days, newest first), a lateral view in every
    third study, and one CT study."""
    today = today or dt.date.today()
    films = sorted(SAMPLES.rglob("*.jpeg"))
    out = []
    for i, path in enumerate(films):
        uid, day = new_uid(), (today - dt.timedelta(days=i % 5)).strftime("%Y%m%d")
        tags = dict(study_uid=uid, patient_id=f"DEMO-{i + 1:03d}", patient_name=f"DEMO^CHILD{i + 1}",
                    accession=f"DEMOACC{i + 1:04d}", study_date=day, study_time=f"{8 + i % 10:02d}3000")
        study = [film(path, view="PA" if i % 2 else "AP", modality="DX" if i % 2 else "CR", **tags)]
        if i % 3 == 0:
            study.append(film(path, view="LL", series_number=2, **tags))
        out.append(study)
    ct_uid = new_uid()
    out.append([film(films[0], study_uid=ct_uid, patient_id="DEMO-CT", patient_name="DEMO^CT", view=None,
                     modality="CT", study_date=today.strftime("%Y%m%d"))])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web")
    args = ap.parse_args(argv)
    from pydicom import dcmread

    from core.dicomweb import DicomWeb, PacsError, PacsSettings
    from core.exitcodes import EXIT_OK, EXIT_PACS

    web = DicomWeb(PacsSettings(url=args.url.rstrip("/")))
    studies = demo_studies()
    try:
        for study in studies:
            datasets = [dcmread(io.BytesIO(b)) for b in study]
            web.store(datasets, datasets[0].StudyInstanceUID)
    except PacsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_PACS
    print(f"loaded {len(studies)} studies ({sum(len(s) for s in studies)} images) into {web.settings.display_url}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
