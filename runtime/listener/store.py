"""Where the node keeps each study on disk until its results are sent, so that a restart loses nothing.

Layout under the store folder (``listen.store``)::

    audit.jsonl                      the audit log (runtime.listener.audit)
    studies/KEY/input/SOPUID.dcm     the instances received, each written whole or not at all
    studies/KEY/result/...           the job's output folder (written whole or not at all); *.dcm are sent
    studies/KEY/failed.json          the study failed: its inputs stay for the operator, it is not rerun

``KEY`` is :func:`study_key` of the StudyInstanceUID. A study whose results were sent is deleted; one without
``result/`` or ``failed.json`` is run again at the next start. The folder should be readable by the node's user only
(the node creates it with mode 0700).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from protocols.dicom.attributes import MALFORMED, text
from protocols.dicom.importer import read_dicom_header
from protocols.files import atomic_write

STUDIES = "studies"
INPUT = "input"
RESULT = "result"
FAILED = "failed.json"
UID_PATTERN = re.compile(r"[0-9.]{1,64}")


def study_key(study_uid: str) -> str:
    """A study's name in the store, the audit log and progress lines: 16 hex digits of SHA-256 of its UID."""
    return hashlib.sha256(study_uid.strip().encode()).hexdigest()[:16]


class StudyStore:
    """The studies kept under one folder (see the module docstring for the layout)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        (self.root / STUDIES).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)

    def study_dir(self, key: str) -> Path:
        """The folder of one study."""
        return self.root / STUDIES / key

    def input_dir(self, key: str) -> Path:
        """The instances received for a study: a DICOM folder, the job's input."""
        return self.study_dir(key) / INPUT

    def result_dir(self, key: str) -> Path:
        """The job's output folder."""
        return self.study_dir(key) / RESULT

    def save_instance(self, key: str, sop_instance_uid: str, data: bytes) -> Path:
        """Write one received instance (a whole Part 10 file); the same instance sent again replaces the first."""
        name = sop_instance_uid if UID_PATTERN.fullmatch(sop_instance_uid) else study_key(sop_instance_uid)
        return atomic_write(self.input_dir(key) / f"{name}.dcm", data)

    def input_files(self, key: str) -> list[Path]:
        """The instances on disk for a study (temporary files of writes in progress left out)."""
        folder = self.input_dir(key)
        return sorted(p for p in folder.glob("*.dcm") if not p.name.startswith(".")) if folder.is_dir() else []

    def arrival_span(self, key: str) -> tuple[float, float, int]:
        """First and last arrival (file times, seconds since the epoch) and the number of instances."""
        times = [p.stat().st_mtime for p in self.input_files(key)]
        return (min(times), max(times), len(times)) if times else (0.0, 0.0, 0)

    def result_files(self, key: str) -> list[Path]:
        """What is sent for a study: every DICOM file of its result folder (previews and reports stay)."""
        folder = self.result_dir(key)
        return sorted(folder.rglob("*.dcm")) if folder.is_dir() else []

    def has_result(self, key: str) -> bool:
        """Whether the study's job finished and its result waits to be sent."""
        return self.result_dir(key).is_dir()

    def drop_result(self, key: str) -> None:
        """Delete a result that is out of date (more instances arrived after the job started)."""
        shutil.rmtree(self.result_dir(key), ignore_errors=True)

    def mark_failed(self, key: str, record: dict[str, Any]) -> None:
        """Keep a failed study's inputs and say why it failed; it is not rerun until more instances arrive."""
        atomic_write(self.study_dir(key) / FAILED, json.dumps(record, indent=2))

    def is_failed(self, key: str) -> bool:
        """Whether the study failed and waits for the operator (or for more instances)."""
        return (self.study_dir(key) / FAILED).is_file()

    def reopen(self, key: str) -> None:
        """A finished or failed study received more instances: forget its result and failure, run it again."""
        self.drop_result(key)
        (self.study_dir(key) / FAILED).unlink(missing_ok=True)

    def remove(self, key: str) -> None:
        """Delete a study whose results were sent."""
        shutil.rmtree(self.study_dir(key), ignore_errors=True)

    def study_keys(self) -> list[str]:
        """The studies on disk, with any temporary folder a stopped job or write left behind removed."""
        keys = []
        for folder in sorted((self.root / STUDIES).iterdir()):
            if folder.name.startswith("."):
                continue
            for leftover in [*folder.glob(".*"), *self.input_dir(folder.name).glob(".*")]:
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
            if self.input_files(folder.name) or self.has_result(folder.name):
                keys.append(folder.name)
            else:
                shutil.rmtree(folder, ignore_errors=True)
        return keys

    def identifiers(self, key: str) -> list[str]:
        """The study's patient ID, name (and its parts) and UIDs, for :func:`runtime.listener.audit.redact`."""
        found: set[str] = set()
        for path in self.input_files(key)[:1] + self.input_files(key)[-1:]:
            try:
                ds = read_dicom_header(path)
            except MALFORMED:
                continue
            if ds is None:
                continue
            name = text(ds, "PatientName")
            found.update({text(ds, "PatientID"), name, *name.split("^"), text(ds, "StudyInstanceUID"),
                          text(ds, "AccessionNumber"), text(ds, "PatientBirthDate")})
        return sorted(v for v in found if v)
