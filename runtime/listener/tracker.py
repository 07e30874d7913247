"""When a study is complete and what each study is doing: the in-memory state machine of the node.

A study is RECEIVING while instances arrive; after ``quiet_s`` seconds without a new instance it is complete and
the job runner takes it (RUNNING); it ends READY (result on disk, to be sent) or FAILED. An instance that arrives
for a READY or FAILED study opens it again (RECEIVING); one that arrives while the study runs marks the running
job out of date, so its result is dropped and the study runs again once quiet. On start the states are rebuilt
from the store.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class State(enum.Enum):
    """Where a study is."""

    RECEIVING = "receiving"
    RUNNING = "running"
    READY = "ready"
    FAILED = "failed"


@dataclass
class Study:
    """One study's state, with what the audit log reports of its arrival."""

    key: str
    state: State
    last_arrival: float  # the tracker's clock
    received: int = 0  # instances received since the node started
    callers: set[str] = field(default_factory=set)
    out_of_date: bool = False


class StudyTracker:
    """Thread-safe states of all studies; ``clock`` is monotonic seconds (``time.monotonic``)."""

    def __init__(self, quiet_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_s = quiet_s
        self.clock = clock
        self._studies: dict[str, Study] = {}
        self._lock = threading.Lock()

    def restore(self, key: str, state: State) -> None:
        """A study found on disk at start: unfinished ones wait another quiet period (more may still come)."""
        with self._lock:
            self._studies[key] = Study(key, state, self.clock())

    def arrived(self, key: str, caller: str) -> State | None:
        """An instance of ``key`` arrived from ``caller``; returns the study's state before it (None if new)."""
        with self._lock:
            study = self._studies.get(key)
            before = study.state if study else None
            if study is None:
                study = self._studies[key] = Study(key, State.RECEIVING, self.clock())
            if study.state is State.RUNNING:
                study.out_of_date = True
            elif study.state in (State.READY, State.FAILED):
                study.state = State.RECEIVING
            study.last_arrival = self.clock()
            study.received += 1
            study.callers.add(caller)
            return before

    def take_complete(self) -> Study | None:
        """The study quiet the longest past ``quiet_s``, now RUNNING (a copy for the runner), or None."""
        with self._lock:
            now = self.clock()
            due = [s for s in self._studies.values()
                   if s.state is State.RECEIVING and now - s.last_arrival >= self.quiet_s]
            if not due:
                return None
            study = min(due, key=lambda s: s.last_arrival)
            study.state, study.out_of_date = State.RUNNING, False
            return Study(study.key, study.state, study.last_arrival, study.received, set(study.callers))

    def finished(self, key: str, ok: bool) -> bool:
        """The job of ``key`` ended; False when instances arrived meanwhile (drop its result: it runs again)."""
        with self._lock:
            study = self._studies[key]
            if study.out_of_date:
                study.state, study.out_of_date = State.RECEIVING, False
                return False
            study.state = State.READY if ok else State.FAILED
            study.received, study.callers = 0, set()
            return True

    def sent(self, key: str) -> bool:
        """The result of ``key`` was sent; True when the study can be deleted (nothing arrived meanwhile)."""
        with self._lock:
            study = self._studies.get(key)
            if study is None or study.state is not State.READY:
                return False
            del self._studies[key]
            return True

    def state(self, key: str) -> State | None:
        """The state of ``key`` (None: unknown, e.g. sent and deleted)."""
        with self._lock:
            study = self._studies.get(key)
            return study.state if study else None

    def keys_in(self, state: State) -> list[str]:
        """The studies in ``state``."""
        with self._lock:
            return [k for k, s in self._studies.items() if s.state is state]
