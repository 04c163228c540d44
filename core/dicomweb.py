"""DICOMweb client for a PACS (QIDO-RS search, WADO-RS retrieval, STOW-RS storage). No Streamlit.

Configuration (:class:`PacsSettings`) comes from the environment or, in the app,
``.streamlit/secrets.toml`` (section ``[pacs]``):

    PNEUMOSCOPE_DICOMWEB_URL        http://127.0.0.1:8042/dicom-web
    PNEUMOSCOPE_DICOMWEB_USER / PNEUMOSCOPE_DICOMWEB_PASSWORD    HTTP basic auth (optional)
    PNEUMOSCOPE_DICOMWEB_TOKEN      bearer token (optional)
    PNEUMOSCOPE_DICOMWEB_VERIFY     TLS verification: on (default), off, or a CA bundle path
    PNEUMOSCOPE_DICOMWEB_TIMEOUT    seconds per request (default 30)

Credentials never leave this module: they are not part of any message, log line, ``repr`` or
audit record; a URL with ``user:password@`` in it is refused (with the URL shown without them).

Everything the PACS sends is untrusted: search results are JSON read with a size bound; an
image is downloaded with a byte bound (``core.imageio.MAX_BYTES``) and handed to the isolated
decoder by the caller (``core.pacs``), never parsed here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

ENV_URL = "PNEUMOSCOPE_DICOMWEB_URL"
ENV_USER = "PNEUMOSCOPE_DICOMWEB_USER"
ENV_PASSWORD = "PNEUMOSCOPE_DICOMWEB_PASSWORD"
ENV_TOKEN = "PNEUMOSCOPE_DICOMWEB_TOKEN"
ENV_VERIFY = "PNEUMOSCOPE_DICOMWEB_VERIFY"
ENV_TIMEOUT = "PNEUMOSCOPE_DICOMWEB_TIMEOUT"
SECRETS_SECTION = "pacs"

DEFAULT_TIMEOUT_S = 30.0
MAX_JSON_BYTES = 32 * 2**20  # a QIDO answer or an instance's metadata
SEARCH_CAP = 2000  # studies fetched for one search (sorted and paged locally)

STUDY_FIELDS = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber",
                "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "PatientAge",
                "ModalitiesInStudy", "NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries")
INSTANCE_FIELDS = ("SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality", "ViewPosition",
                   "ImageLaterality", "BodyPartExamined", "NumberOfFrames", "Rows", "Columns", "SeriesDescription",
                   "Manufacturer", "ImageType", "SeriesNumber", "InstanceNumber", "ProtocolName")


class PacsError(RuntimeError):
    """A PACS problem in words for a person (never with credentials). ``kind``: ``config``,
    ``unreachable``, ``auth``, ``timeout``, ``refused`` (the server said no), ``too_large``,
    ``bad_answer``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class PacsSettings:
    url: str
    username: str | None = dataclasses.field(default=None, repr=False)
    password: str | None = dataclasses.field(default=None, repr=False)
    token: str | None = dataclasses.field(default=None, repr=False)
    verify: bool | str = True
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        parts = urlsplit(self.url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError("config", "The DICOMweb address must be an http(s) URL such as "
                                      f"http://127.0.0.1:8042/dicom-web. Received: url={_safe_url(self.url)!r}")
        if parts.username or parts.password:
            raise PacsError("config", "The DICOMweb address contains a user name or password; put them in "
                                      f"{ENV_USER} / {ENV_PASSWORD} (or the [pacs] secrets) instead. "
                                      f"Received: url={_safe_url(self.url)!r}")
        if self.token and (self.username or self.password):
            raise PacsError("config", "Give either a bearer token or a user name and password for the PACS, not both.")
        if not (self.timeout_s > 0):
            raise PacsError("config", f"The PACS timeout must be a positive number of seconds. Received: "
                                      f"timeout={self.timeout_s!r}")

    @property
    def display_url(self) -> str:
        """The address without credentials or query (safe to show)."""
        return _safe_url(self.url)

    @classmethod
    def from_env(cls, secrets: Mapping[str, Any] | None = None) -> "PacsSettings | None":
        """Settings from ``secrets`` (the app's ``st.secrets["pacs"]``: url, username, password,
        token, verify, timeout) over the environment; ``None`` when no URL is configured."""
        s = dict(secrets or {})

        def get(key: str, env: str) -> Any:
            value = s.get(key)
            return value if value not in (None, "") else os.environ.get(env) or None

        url = get("url", ENV_URL)
        if not url:
            return None
        verify_raw = get("verify", ENV_VERIFY)
        verify: bool | str = True
        if isinstance(verify_raw, bool):
            verify = verify_raw
        elif verify_raw is not None:
            text = str(verify_raw).strip()
            if text.lower() in ("0", "false", "off", "no"):
                verify = False
            elif text.lower() not in ("1", "true", "on", "yes", ""):
                verify = text  # a CA bundle
        timeout_raw = get("timeout", ENV_TIMEOUT)
        try:
            timeout = float(timeout_raw) if timeout_raw is not None else DEFAULT_TIMEOUT_S
        except (TypeError, ValueError):
            raise PacsError("config", f"{ENV_TIMEOUT} must be a number of seconds. Received: {timeout_raw!r}") from None
        return cls(url=str(url).rstrip("/"), username=get("username", ENV_USER), password=get("password", ENV_PASSWORD),
                   token=get("token", ENV_TOKEN), verify=verify, timeout_s=timeout)


def _safe_url(url: Any) -> str:
    """``url`` without user info, query or fragment (for messages)."""
    try:
        p = urlsplit(str(url))
        host = p.hostname or ""
        netloc = host + (f":{p.port}" if p.port else "")
        return urlunsplit((p.scheme, netloc, p.path, "", ""))
    except ValueError:
        return "(an invalid address)"


def _session(settings: PacsSettings):
    import requests

    class _Session(requests.Session):
        def request(self, method, url, **kwargs):  # noqa: ANN001 - requests' signature
            kwargs.setdefault("timeout", settings.timeout_s)
            return super().request(method, url, **kwargs)

    s = _Session()
    s.verify = settings.verify
    s.trust_env = False  # no proxy or netrc credentials picked up behind the configuration's back
    if settings.username or settings.password:
        s.auth = (settings.username or "", settings.password or "")
    if settings.token:
        s.headers["Authorization"] = f"Bearer {settings.token}"
    return s


class DicomWeb:
    """A DICOMweb endpoint: QIDO-RS search, bounded WADO-RS retrieval, STOW-RS storage."""

    def __init__(self, settings: PacsSettings) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.settings = settings
        self.session = _session(settings)
        self.client = DICOMwebClient(url=settings.url, session=self.session)

    # --- errors --------------------------------------------------------------------------------
    def _fail(self, exc: BaseException, what: str) -> PacsError:
        import requests

        where = self.settings.display_url
        if isinstance(exc, PacsError):
            return exc
        if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
            code = exc.response.status_code
            if code in (401, 403):
                return PacsError("auth", f"The PACS at {where} refused the credentials (HTTP {code}) while {what}. "
                                         "Check the user name and password (or token) configured for PneumoScope.")
            if code == 413:
                return PacsError("too_large", f"The PACS at {where} refused the request as too large while {what}.")
            return PacsError("refused", f"The PACS at {where} answered HTTP {code} while {what}.")
        if isinstance(exc, requests.exceptions.SSLError):
            return PacsError("unreachable", f"The TLS certificate of the PACS at {where} could not be verified while "
                                            f"{what}. Install its CA bundle ({ENV_VERIFY}=/path/ca.pem); do not turn "
                                            "verification off outside a test setup.")
        if isinstance(exc, requests.exceptions.Timeout):
            return PacsError("timeout", f"The PACS at {where} did not answer within {self.settings.timeout_s:g} s "
                                        f"while {what}.")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return PacsError("unreachable", f"The PACS at {where} cannot be reached while {what}. Check that it is "
                                            "running and that the address is right.")
        if isinstance(exc, (ValueError, KeyError, TypeError)):
            return PacsError("bad_answer", f"The PACS at {where} sent an answer PneumoScope cannot read while {what}.")
        return PacsError("unreachable", f"Talking to the PACS at {where} failed while {what} ({type(exc).__name__}).")

    def _get_bounded(self, url: str, accept: str, limit: int, what: str) -> tuple[bytes, str]:
        """GET ``url`` streaming at most ``limit`` bytes; (body, content type)."""
        try:
            with self.session.get(url, headers={"Accept": accept}, stream=True) as r:
                r.raise_for_status()
                declared = r.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > limit:
                    raise PacsError("too_large", f"The PACS sent {int(declared) / 2**20:.1f} MB while {what}; at most "
                                                 f"{limit / 2**20:.0f} MB are accepted.")
                chunks, n = [], 0
                for chunk in r.iter_content(1 << 20):
                    n += len(chunk)
                    if n > limit:
                        raise PacsError("too_large", f"The PACS sent more than {limit / 2**20:.0f} MB while {what}; "
                                                     "the download was stopped.")
                    chunks.append(chunk)
                return b"".join(chunks), r.headers.get("Content-Type", "")
        except Exception as exc:  # noqa: BLE001 - mapped to a PacsError in words
            raise self._fail(exc, what) from None

    def _json(self, url: str, what: str) -> Any:
        body, _ = self._get_bounded(url, "application/dicom+json", MAX_JSON_BYTES, what)
        if not body.strip():
            return []
        try:
            return json.loads(body)
        except ValueError:
            raise PacsError("bad_answer", f"The PACS at {self.settings.display_url} sent invalid JSON while {what}.") from None

    # --- QIDO-RS -----------------------------------------------------------------------------
    def ping(self) -> None:
        """One small search, to say early whether the PACS answers and accepts the credentials."""
        self._json(f"{self.settings.url}/studies?limit=1", "checking the connection")

    def search_studies(self, *, date_from: str | None = None, date_to: str | None = None,
                       modalities: Iterable[str] = ("CR", "DX"), patient_id: str | None = None,
                       accession: str | None = None, cap: int = SEARCH_CAP) -> tuple[list[dict], bool]:
        """Studies matching the filters, newest first: (rows, truncated). One QIDO query per
        modality (``ModalitiesInStudy`` takes one value on common servers), merged; at most
        ``cap`` per query (``truncated`` says when more matched: narrow the dates)."""
        from urllib.parse import urlencode

        base: dict[str, str] = {}
        if date_from or date_to:
            base["StudyDate"] = f"{_da(date_from) or ''}-{_da(date_to) or ''}"
        if patient_id:
            base["PatientID"] = _qido_value(patient_id, "patient ID")
        if accession:
            base["AccessionNumber"] = _qido_value(accession, "accession number")
        rows: dict[str, dict] = {}
        truncated = False
        for modality in modalities or (None,):
            params = dict(base, limit=str(cap + 1), includefield=",".join(STUDY_FIELDS))
            if modality:
                params["ModalitiesInStudy"] = modality
            answer = self._json(f"{self.settings.url}/studies?{urlencode(params)}", "searching studies")
            if not isinstance(answer, list):
                raise PacsError("bad_answer", "The PACS answered the study search with something other than a list.")
            truncated = truncated or len(answer) > cap
            for item in answer[:cap]:
                row = study_row(item)
                if row["StudyInstanceUID"]:
                    rows[row["StudyInstanceUID"]] = row
        ordered = sorted(rows.values(), key=lambda r: (r["StudyDate"], r["StudyTime"]), reverse=True)
        return ordered, truncated

    def study_instances(self, study_uid: str) -> list[dict]:
        """Every instance of a study with the attributes needed to pick the frontal film."""
        from urllib.parse import urlencode

        uid = _uid(study_uid)
        answer = self._json(f"{self.settings.url}/studies/{uid}/instances?"
                            f"{urlencode({'includefield': ','.join(INSTANCE_FIELDS)})}", "listing the study's images")
        if not isinstance(answer, list):
            raise PacsError("bad_answer", "The PACS answered the image list with something other than a list.")
        return [flat(item) for item in answer]

    def instance_metadata(self, study_uid: str, series_uid: str, sop_uid: str) -> dict:
        """WADO-RS metadata of one instance as DICOM JSON (bulk data not included)."""
        answer = self._json(f"{self.settings.url}/studies/{_uid(study_uid)}/series/{_uid(series_uid)}/instances/"
                            f"{_uid(sop_uid)}/metadata", "reading the image's header")
        if not isinstance(answer, list) or not answer or not isinstance(answer[0], dict):
            raise PacsError("bad_answer", "The PACS sent no header for the image.")
        return answer[0]

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str, limit: int) -> bytes:
        """WADO-RS: the instance's DICOM file bytes (Part 10), at most ``limit`` bytes, as sent
        (any transfer syntax: the isolated decoder reads them)."""
        body, ctype = self._get_bounded(
            f"{self.settings.url}/studies/{_uid(study_uid)}/series/{_uid(series_uid)}/instances/{_uid(sop_uid)}",
            'multipart/related; type="application/dicom"; transfer-syntax=*', limit + 64 * 1024,
            "downloading the image")
        part = first_multipart_part(body, ctype)
        if len(part) > limit:
            raise PacsError("too_large", f"The image is larger than {limit / 2**20:.0f} MB; it was not analysed.")
        return part

    # --- STOW-RS -----------------------------------------------------------------------------
    def store(self, datasets: list, study_uid: str) -> None:
        """STOW-RS ``datasets`` into ``study_uid``; raises PacsError unless every one was stored."""
        try:
            answer = self.client.store_instances(datasets=datasets, study_instance_uid=study_uid)
        except Exception as exc:  # noqa: BLE001 - mapped to a PacsError in words
            raise self._fail(exc, "sending the results") from None
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = sorted({str(getattr(item, "FailureReason", "?")) for item in failed})
            raise PacsError("refused", f"The PACS refused {len(failed)} of {len(datasets)} result object(s) "
                                       f"(failure reason {', '.join(reasons)}). Nothing else was changed; a retry "
                                       "sends the same objects again.")

    def series_of(self, study_uid: str, modality: str | None = None) -> list[dict]:
        """The series of a study (optionally one modality), flat dicts."""
        from urllib.parse import urlencode

        params = {"includefield": "SeriesDescription,Manufacturer,Modality,SeriesInstanceUID,SeriesNumber"}
        if modality:
            params["Modality"] = modality
        answer = self._json(f"{self.settings.url}/studies/{_uid(study_uid)}/series?{urlencode(params)}",
                            "listing the study's series")
        return [flat(item) for item in answer] if isinstance(answer, list) else []


# --- DICOM JSON -> plain values --------------------------------------------------------------
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*\Z")


def _uid(value: str) -> str:
    text = str(value or "").strip()
    if not _UID_RE.match(text) or len(text) > 64:
        raise PacsError("bad_answer", f"Not a DICOM UID (digits and dots, at most 64). Received: {text[:80]!r}")
    return text


def _da(value: str | None) -> str | None:
    """A date as DICOM DA (YYYYMMDD) from 'YYYY-MM-DD', 'YYYYMMDD' or a date object."""
    if value in (None, ""):
        return None
    text = str(value).replace("-", "")[:8]
    if not re.fullmatch(r"\d{8}", text):
        raise PacsError("config", f"A date must be YYYY-MM-DD. Received: {value!r}")
    return text


def _qido_value(value: str, what: str) -> str:
    text = str(value).strip()
    if not text or len(text) > 64 or any(c in text for c in "\\*?=&\n\r"):
        raise PacsError("config", f"The {what} must be 1-64 characters without wildcards or backslashes. "
                                  f"Received: {text[:80]!r}")
    return text


@functools.lru_cache(maxsize=1)
def _keyword_tags() -> dict[str, str]:
    """{tag as 8 hex digits: keyword} of the fields asked for (built once: flat() runs per row)."""
    from pydicom.datadict import tag_for_keyword

    return {f"{tag_for_keyword(k):08X}": k for k in set(STUDY_FIELDS + INSTANCE_FIELDS)}


def flat(item: Mapping[str, Any]) -> dict:
    """DICOM JSON (``{"0020000D": {"vr": "UI", "Value": [...]}}``) -> {keyword: value} for the
    fields this module asks for; person names as their alphabetic text; lists kept as lists
    where DICOM allows several values (ImageType, ModalitiesInStudy)."""
    tags = _keyword_tags()
    out: dict[str, Any] = {}
    for tag, elem in (item or {}).items():
        key = tags.get(str(tag).upper())
        if key is None or not isinstance(elem, Mapping):
            continue
        values = elem.get("Value") or []
        if not isinstance(values, list):
            continue
        clean = []
        for v in values[:16]:
            if isinstance(v, Mapping):  # PN
                v = v.get("Alphabetic", "")
            if isinstance(v, (str, int, float)):
                clean.append(str(v)[:200] if isinstance(v, str) else v)
        if key in ("ImageType", "ModalitiesInStudy"):
            out[key] = [str(v) for v in clean]
        else:
            out[key] = clean[0] if clean else ""
    return out


def study_row(item: Mapping[str, Any]) -> dict:
    row = {k: "" for k in STUDY_FIELDS}
    row["ModalitiesInStudy"] = []
    row.update(flat(item))
    for key in ("NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries"):
        try:
            row[key] = int(row[key]) if row[key] != "" else None
        except (TypeError, ValueError):
            row[key] = None
    return row


def first_multipart_part(body: bytes, content_type: str) -> bytes:
    """The first part of a ``multipart/related`` body (WADO-RS); a plain body is returned as is."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "", re.I)
    if not content_type.lower().startswith("multipart/") or not m:
        return body
    boundary = b"--" + m.group(1).encode("latin-1")
    start = body.find(boundary)
    if start < 0:
        raise PacsError("bad_answer", "The PACS sent a multipart answer without its boundary.")
    head_end = body.find(b"\r\n\r\n", start)
    if head_end < 0:
        raise PacsError("bad_answer", "The PACS sent a multipart part without headers.")
    end = body.find(b"\r\n" + boundary, head_end + 4)
    if end < 0:
        raise PacsError("bad_answer", "The PACS sent a multipart answer that is cut off.")
    return body[head_end + 4:end]


__all__ = ["DicomWeb", "PacsError", "PacsSettings", "first_multipart_part", "flat", "study_row"]
