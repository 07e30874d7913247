"""Timing a runtime job's stages (read, predict, optimise, write, ...), each reported as it starts and ends: the
breakdown every runtime command prints and the DICOM node records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Progress = Callable[[str, str], None]  # (stage, message)


class StageClock:
    """Times named stages and reports their start and end through ``progress``."""

    def __init__(self, progress: Progress | None = None):
        self.timings: dict[str, float] = {}
        self.progress = progress

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress:
            self.progress(name, "started")
        start = time.perf_counter()
        yield
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        if self.progress:
            self.progress(name, f"done in {self.timings[name]:.1f} s")
