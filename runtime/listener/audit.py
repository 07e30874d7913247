"""The node's audit log: one JSON object per line, appended and flushed to disk as each event happens.

A hospital keeps this file as its record of what the node received, did and sent. It names a study only by its
key (:func:`runtime.listener.store.study_key`, a hash of the StudyInstanceUID: the hospital can find a study's line
from the UID, the line alone does not give the UID away), never a patient's name or ID and never pixel data; error
messages are stripped of the study's identifiers (:func:`redact`) before they are written.

Events (``event``): ``node-started``, ``node-stopped``, ``refused`` (an association from a caller not allowed),
``received`` (a study complete: instances, modalities, callers, receive time), ``started`` (segment or plan),
``done`` (its timings), ``failed`` (error kind and redacted message), ``abandoned`` (stopped mid-job; rerun at next
start), ``send-failed`` (one round of attempts), ``sent`` (destination, files, send time, total time).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REDACTED = "<redacted>"


def redact(message: str, identifiers: Iterable[str]) -> str:
    """``message`` with every identifier (patient ID, name parts, study UID) replaced by ``<redacted>``."""
    for value in sorted({v.strip() for v in identifiers if v and len(v.strip()) >= 2}, key=len, reverse=True):
        message = message.replace(value, REDACTED)
    return message


class AuditLog:
    """Appends events to a JSON-lines file; safe to call from the receiving, job and sending threads at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, event: str, study: str | None = None, **fields: Any) -> dict[str, Any]:
        """Append one event (UTC time to the millisecond) and flush it to disk before returning it."""
        record = {"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                  "event": event}
        if study is not None:
            record["study"] = study
        record.update(fields)
        line = json.dumps(record, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return record


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every event of an audit log, oldest first (a line cut short by a crash is skipped)."""
    events = []
    if Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events
