"""PneumoScope's result as DICOM objects for the PACS: a Structured Report and a Secondary
Capture, both in new series of the analysed study, marked as derived and machine-generated.

* **Structured Report** (``highdicom.sr.ComprehensiveSR``): the finding (NORMAL / PNEUMONIA /
  INDETERMINATE / REJECTED, with the guard's reason when rejected), the calibrated probability,
  threshold and indeterminate band in percent (none of them for a rejected image: no export
  carries its probability), the algorithm and model version, the device observer, the
  research-demo disclaimer, and a reference to the analysed image (INFERRED FROM).
* **Secondary Capture** (``highdicom.sc.SCImage``): the film with the heatmap overlay (or the
  sentence that no region raised the score) and a legend burned in -- "research demo, not for
  diagnosis", verdict, probability, method, model version -- so any viewer shows it.

UIDs are derived from (study, analysed image, model version), never random: sending the same
result again stores the same objects (the PACS keeps one copy), so a retry is safe and a result
is never duplicated for the same image and model version. The SC is sent before the SR (the SR
is the "done" marker that ``core.pacs`` looks for).
"""

from __future__ import annotations

import numpy as np

# A private coding scheme for what standard codes do not name.
SCHEME = "99PNEUMOSCOPE"
MANUFACTURER = "PneumoScope (research demo)"
DISCLAIMER = "Research demo - not a medical device. Not for diagnosis or treatment decisions."
# Series descriptions "<prefix><model version>": core.pacs finds earlier results by RESULT_PREFIX.
RESULT_PREFIX = "PneumoScope result "
HEATMAP_PREFIX = "PneumoScope heatmap "
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902


def result_uids(study_uid: str, image_uid: str, model_version: str) -> dict[str, str]:
    """Deterministic UIDs of the result series and objects for one image and model version."""
    from pydicom.uid import generate_uid

    def uid(*parts: str) -> str:
        return str(generate_uid(entropy_srcs=["pneumoscope-result", *parts]))

    return {
        "sr_series": uid(study_uid, model_version, "SR series"),
        "sc_series": uid(study_uid, model_version, "SC series"),
        "sr": uid(study_uid, image_uid, model_version, "SR"),
        "sc": uid(study_uid, image_uid, model_version, "SC"),
    }


def _codes():
    from highdicom.sr import CodedConcept

    return {
        "report": CodedConcept("18748-4", "LN", "Diagnostic imaging report"),
        "finding": CodedConcept("121071", "DCM", "Finding"),
        "comment": CodedConcept("121106", "DCM", "Comment"),
        "source": CodedConcept("121112", "DCM", "Source of Measurement"),
        "algorithm_name": CodedConcept("111001", "DCM", "Algorithm Name"),
        "algorithm_version": CodedConcept("111003", "DCM", "Algorithm Version"),
        "probability": CodedConcept("PPNEU", SCHEME, "Calibrated probability of pneumonia"),
        "threshold": CodedConcept("THRESH", SCHEME, "Decision threshold"),
        "band_low": CodedConcept("BANDLO", SCHEME, "Indeterminate band, lower limit"),
        "band_high": CodedConcept("BANDHI", SCHEME, "Indeterminate band, upper limit"),
        "NORMAL": CodedConcept("17621005", "SCT", "Normal"),
        "PNEUMONIA": CodedConcept("233604007", "SCT", "Pneumonia"),
        "INDETERMINATE": CodedConcept("INDET", SCHEME, "Indeterminate - refer to a radiologist"),
        "REJECTED": CodedConcept("REJECT", SCHEME, "Not analysed - input rejected"),
        "percent": CodedConcept("%", "UCUM", "percent"),
    }


def finding_of(pred) -> str:
    """NORMAL / PNEUMONIA / INDETERMINATE / REJECTED for a prediction that was analysed."""
    if not pred.ok or pred.rejected:
        return "REJECTED"
    return pred.label if pred.label in ("NORMAL", "PNEUMONIA", "INDETERMINATE") else "REJECTED"


def build_sr(ref, pred, uids: dict[str, str], note: str = ""):
    """The Structured Report of ``pred`` on the image whose header is ``ref`` (a pydicom Dataset
    with the patient, study, series and SOP attributes of the analysed image)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    c = _codes()
    finding = finding_of(pred)
    rel = hd.sr.RelationshipTypeValues.CONTAINS
    items = [hd.sr.CodeContentItem(name=c["finding"], value=c[finding], relationship_type=rel)]
    if finding == "REJECTED":
        reason = pred.guard_message or pred.error or "the input check refused the image"
        items.append(hd.sr.TextContentItem(name=c["comment"], value=f"Not analysed: {reason}"[:1000], relationship_type=rel))
    else:
        for key, value in (("probability", pred.probability), ("threshold", pred.threshold),
                           ("band_low", (pred.band or (None, None))[0]), ("band_high", (pred.band or (None, None))[1])):
            if value is not None:
                items.append(hd.sr.NumContentItem(name=c[key], value=round(100.0 * float(value), 1), unit=c["percent"],
                                                  relationship_type=rel))
    items += [
        hd.sr.TextContentItem(name=c["algorithm_name"], value="PneumoScope", relationship_type=rel),
        hd.sr.TextContentItem(name=c["algorithm_version"], value=_version(pred)[:64],
                              relationship_type=rel),
        hd.sr.TextContentItem(name=c["comment"], value=(DISCLAIMER + (f" {note}" if note else ""))[:1000],
                              relationship_type=rel),
        hd.sr.ImageContentItem(name=c["source"], referenced_sop_class_uid=ref.SOPClassUID,
                               referenced_sop_instance_uid=ref.SOPInstanceUID,
                               relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM),
    ]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=str(_device_uid()), name="PneumoScope", manufacturer_name=MANUFACTURER,
            model_name=_version(pred)[:64]),
    )
    root = hd.sr.ContainerContentItem(name=c["report"])
    root.ContentSequence = hd.sr.ContentSequence([*observer, *items])
    sr = hd.sr.ComprehensiveSR(
        evidence=[ref], content=root, series_instance_uid=uids["sr_series"], series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids["sr"], instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        is_final=False, is_verified=False,
    )
    sr.SeriesDescription = (RESULT_PREFIX + _version(pred))[:64]
    return sr


def _version(pred) -> str:
    return str(pred.model_version or "unknown")


def _device_uid() -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["pneumoscope-device"])


def legend_lines(pred, method_label: str | None) -> list[str]:
    finding = finding_of(pred)
    lines = ["RESEARCH DEMO - NOT FOR DIAGNOSIS", f"PneumoScope model {_version(pred)}"]
    if finding == "REJECTED":
        lines.append("Not analysed: input rejected (no probability)")
    else:
        lines.append(f"{finding}  P(pneumonia) {100 * float(pred.probability):.1f} %  "
                     f"(threshold {100 * float(pred.threshold):.1f} %)")
        lines.append(f"Heatmap: {method_label}" if method_label else "No region raised the score (no heatmap)")
    return lines


def overlay_image(pred, method_label: str | None, alpha: float = 0.45) -> np.ndarray:
    """The film (display copy) with the heatmap overlay, if any, and a legend band below: RGB uint8."""
    from PIL import Image, ImageDraw, ImageFont

    from core.gradcam import map_overlay

    base = np.asarray(pred.image if pred.image is not None else np.zeros((256, 256, 3), np.uint8))
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    drawn = None if finding_of(pred) == "REJECTED" else map_overlay(base, pred.heatmap, alpha)
    show_map = drawn is not None
    film = drawn if show_map else base[..., :3].astype(np.uint8)
    if min(film.shape[:2]) < 512:  # legible text needs pixels: scale small films up
        scale = 512 / min(film.shape[:2])
        film = np.asarray(Image.fromarray(film).resize((round(film.shape[1] * scale), round(film.shape[0] * scale)),
                                                       Image.BILINEAR))
    lines = legend_lines(pred, method_label if show_map else None)
    size = max(14, film.shape[1] // 40)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    band = Image.new("RGB", (film.shape[1], (size + 8) * len(lines) + 12), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((10, 6 + i * (size + 8)), line, fill=(255, 255, 0) if i == 0 else (255, 255, 255), font=font)
    return np.concatenate([film, np.asarray(band)], axis=0)


def build_sc(ref, pred, uids: dict[str, str], method_label: str | None):
    """The Secondary Capture (RGB, derived, legend burned in) of ``pred`` on ``ref``'s image."""
    import highdicom as hd

    pixels = np.ascontiguousarray(overlay_image(pred, method_label))
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref, pixel_array=pixels, photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8, coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=uids["sc_series"],
        series_number=SC_SERIES_NUMBER, sop_instance_uid=uids["sc"], instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
    )
    sc.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    sc.SeriesDescription = (HEATMAP_PREFIX + _version(pred))[:64]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = "PneumoScope heatmap overlay with a burned-in legend (machine-generated)"
    sc.ImageComments = DISCLAIMER
    return sc


__all__ = ["DISCLAIMER", "HEATMAP_PREFIX", "RESULT_PREFIX", "build_sc", "build_sr", "finding_of", "legend_lines", "overlay_image", "result_uids"]
