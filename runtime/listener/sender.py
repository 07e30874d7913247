"""Sending results: C-STORE of a study's result files to the destination, and the thread that retries until sent.

One attempt (:func:`send_files`) is one association carrying every file of the study; any refusal or non-success
status fails the whole attempt (the destination may keep the files it accepted: sending the same instances again
replaces them, as C-STORE of the same SOP Instance UID does). :class:`Sender` makes ``retry.attempts`` attempts
``retry.interval_s`` apart, then writes ``send-failed`` to the audit log and tries another round after
``retry.resend_after_s``; the result stays on disk throughout, so a restart sends it too.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.presentation import build_context

from protocols.errors import DeploymentError
from runtime.listener.audit import AuditLog
from runtime.listener.settings import Destination, ListenerSettings, Retry
from runtime.listener.store import StudyStore
from runtime.listener.tracker import StudyTracker

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
TIMEOUT_S = 30.0  # connection, association and per-message limits: a hung destination fails the attempt


class SendError(DeploymentError):
    """The destination could not be reached, refused the association, or did not store a file."""


def send_files(files: list[Path], destination: Destination, calling_ae_title: str) -> None:
    """Send ``files`` in one association; raises :class:`SendError` naming the cause and the fix."""
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    syntaxes = sorted({(str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in headers})
    ae = AE(ae_title=calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = TIMEOUT_S
    contexts = [build_context(sop, sorted({ts, IMPLICIT_VR_LITTLE_ENDIAN})) for sop, ts in syntaxes]
    assoc = ae.associate(destination.host, destination.port, contexts, ae_title=destination.ae_title)
    if not assoc.is_established:
        how = "refused the association" if assoc.is_rejected else "could not be reached"
        raise SendError(f"destination {destination} {how}; check that it runs, that listen.destination is right "
                        f"and that it accepts calls from AE title {calling_ae_title}")
    try:
        for path in files:
            status = assoc.send_c_store(path)
            code = int(getattr(status, "Status", -1)) if status else -1
            if code != 0x0000:
                raise SendError(f"destination {destination} did not store {path.name} (status "
                                f"{'none: connection lost' if code < 0 else hex(code)}); check the destination's log "
                                "(disk space, accepted object kinds)")
    finally:
        if assoc.is_established:
            assoc.release()


class Sender(threading.Thread):
    """Sends READY studies to the destination with retries until sent or the node stops."""

    def __init__(self, settings: ListenerSettings, store: StudyStore, tracker: StudyTracker, audit: AuditLog,
                 say: Callable[[str], None], stop: threading.Event) -> None:
        super().__init__(name="fedrt-listen-sender", daemon=True)
        self.settings, self.store, self.tracker, self.audit, self.say, self.stop = (settings, store, tracker, audit,
                                                                                   say, stop)
        self._due: list[tuple[float, str]] = []  # (monotonic time of the next round, study key)
        self._wake = threading.Condition()
        self.first_arrival: dict[str, float] = {}  # study key -> first arrival (epoch seconds), for total time

    def submit(self, key: str, first_arrival: float | None = None) -> None:
        """Queue a study's result for sending now."""
        with self._wake:
            if first_arrival is not None:
                self.first_arrival[key] = first_arrival
            heapq.heappush(self._due, (time.monotonic(), key))
            self._wake.notify()

    def run(self) -> None:
        """Take the next due study and send it, until ``stop`` is set."""
        while not self.stop.is_set():
            with self._wake:
                if not self._due or self._due[0][0] > time.monotonic():
                    self._wake.wait(timeout=min(0.5, max(0.0, self._due[0][0] - time.monotonic()))
                                    if self._due else 0.5)
                    continue
                _, key = heapq.heappop(self._due)
                if key in [k for _, k in self._due]:
                    continue  # queued twice (reopened and finished again): the later entry sends it
            if not self._round(key) and not self.stop.is_set() and self.store.has_result(key):
                with self._wake:
                    heapq.heappush(self._due, (time.monotonic() + self.settings.retry.resend_after_s, key))

    def _round(self, key: str) -> bool:
        """Up to ``retry.attempts`` attempts; True when sent (or no longer to be sent)."""
        retry: Retry = self.settings.retry
        destination = self.settings.destination
        error = ""
        for attempt in range(1, retry.attempts + 1):
            files = self.store.result_files(key)
            if not files:
                return True  # reopened meanwhile: a new result will be queued
            start = time.perf_counter()
            try:
                send_files(files, destination, self.settings.ae_title)
            except Exception as exc:  # any failure (unreadable result file, network, a bug) fails this attempt only
                error = str(exc) if isinstance(exc, SendError) else f"{type(exc).__name__}: {exc}"
                self.say(f"study {key}: send attempt {attempt}/{retry.attempts} to {destination} failed: {error}")
                if attempt < retry.attempts and self.stop.wait(retry.interval_s):
                    return False
                continue
            send_s = time.perf_counter() - start
            first = self.first_arrival.pop(key, None)
            total = {"total_s": round(time.time() - first, 3)} if first else {}
            self.audit.write("sent", key, destination=str(destination), files=len(files), attempt=attempt,
                             send_s=round(send_s, 3), **total)
            self.say(f"study {key}: sent {len(files)} file(s) to {destination} in {send_s:.1f} s")
            if self.tracker.sent(key):
                self.store.remove(key)
            return True
        self.audit.write("send-failed", key, destination=str(destination), attempts=retry.attempts, error=error,
                         next_round_s=retry.resend_after_s)
        return False
