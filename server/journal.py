"""The server's journal of federated runs: one small file per Flower run in the SuperLink's state folder, written
by the ServerApp as it starts and ends a run. A run still marked running when the server starts again was cut off
by the server's own death (or a stop of the whole server), and is resumed from its last round checkpoint
(``server.resume``); a run that failed for a reason (too few sites, bad settings) is not, nor one an operator
stopped (Flower kills its ServerApp at once, so ``server.resume`` asks Flower and marks it stopped).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from protocols.errors import DataError
from protocols.files import atomic_write

JOURNAL_DIR = "fedrt-runs"  # under the SuperLink's state folder (the ServerApp's working folder)
RUNNING, FINISHED, FAILED, STOPPED, RESUMED = "running", "finished", "failed", "stopped", "resumed"


@dataclass(frozen=True)
class JournalEntry:
    """One Flower run of fedrt's ServerApp: its MLflow run and store, and how it stands."""

    flower_run_id: int
    mlflow_run_id: str
    tracking_uri: str
    status: str = RUNNING
    resumed_by: int | None = None  # the Flower run that took over after a restart


def absolute_uri(uri: str, base: Path) -> str:
    """``uri`` with a relative SQLite path made absolute from ``base`` (the ServerApp's working folder), so the
    restarted server finds the same store from wherever it runs.
    """
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((base / uri[len(prefix):]).resolve())
    return uri


class RunJournal:
    """The journal in ``folder`` (one JSON file per Flower run, written atomically)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, flower_run_id: int) -> Path:
        return self.folder / f"{flower_run_id}.json"

    def write(self, entry: JournalEntry) -> JournalEntry:
        """Record ``entry`` (replacing the run's previous state)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(self._path(entry.flower_run_id), json.dumps(asdict(entry)))
        return entry

    def mark(self, entry: JournalEntry, status: str, resumed_by: int | None = None) -> JournalEntry:
        """Record a new status for the run of ``entry``."""
        return self.write(replace(entry, status=status, resumed_by=resumed_by))

    def entries(self) -> list[JournalEntry]:
        """Every recorded run, in file-name order; an unreadable entry is an error naming its file."""
        entries = []
        for path in sorted(self.folder.glob("*.json")) if self.folder.is_dir() else []:
            try:
                entries.append(JournalEntry(**json.loads(path.read_text())))
            except (ValueError, TypeError) as exc:
                raise DataError(f"run journal entry {path} is unreadable ({exc}); move it away (the run it describes "
                                "then resumes only by hand, with resume=<MLflow run id>)") from exc
        return entries

    def interrupted(self) -> list[JournalEntry]:
        """Runs still marked running: their ServerApp died with the server."""
        return [e for e in self.entries() if e.status == RUNNING]
