"""The DICOM node's main loop: restore what the store holds, listen, run complete studies one at a time in a worker
thread, send results in another, and stop cleanly on SIGTERM or SIGINT.

Stopping: the first signal closes the port (no new associations), lets the running study finish (its result is
kept and sent at the next start) and returns; a second signal abandons the running study at once: its inputs stay
and it runs again at the next start (the partial output is a temporary folder the store removes). One study that
fails, for any reason, is written to the audit log as ``failed`` and never stops the node.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable

from protocols.errors import FedrtError
from runtime.listener.audit import AuditLog, redact
from runtime.listener.jobs import JobRunner
from runtime.listener.scp import StorageScp
from runtime.listener.sender import Sender
from runtime.listener.settings import ListenerSettings
from runtime.listener.store import StudyStore
from runtime.listener.tracker import State, Study, StudyTracker

POLL_S = 0.2  # how often the worker looks for a complete study and the main thread for a stop
TIMEOUT_JOIN_S = 60.0  # an attempt in flight ends within the sender's network timeouts


def say_on_stderr(message: str) -> None:
    """A progress line for the operator (the node's console or journal)."""
    print(f"fedrt listen: {message}", file=sys.stderr, flush=True)


def _iso(epoch_s: float) -> str:
    """UTC time of an epoch timestamp, to the millisecond."""
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Worker(threading.Thread):
    """Takes complete studies from the tracker and runs them, one at a time, until told to stop."""

    def __init__(self, runner: JobRunner, store: StudyStore, tracker: StudyTracker, audit: AuditLog,
                 sender: Sender, say: Callable[[str], None], stop: threading.Event) -> None:
        super().__init__(name="fedrt-listen-worker", daemon=True)
        self.runner, self.store, self.tracker, self.audit, self.sender, self.say, self.stop = (
            runner, store, tracker, audit, sender, say, stop)
        self.current: str | None = None

    def run(self) -> None:
        """Run complete studies until ``stop`` is set (the running one is finished first)."""
        while not self.stop.is_set():
            study = self.tracker.take_complete()
            if study is None:
                self.stop.wait(POLL_S)
                continue
            self.current = study.key
            try:
                self.process(study)
            except Exception:  # the log or the store failed around the job: keep the study for the next start
                traceback.print_exc()
                self.say(f"study {study.key}: could not be recorded (see the traceback); it reruns at the next start")
            finally:
                self.current = None

    def process(self, study: Study) -> None:
        """One complete study: audit its arrival, segment or plan it, and queue the result or record the failure."""
        key = study.key
        first, last, instances = self.store.arrival_span(key)
        start = time.perf_counter()
        received = {"instances": instances, "callers": sorted(study.callers), "first_arrival": _iso(first),
                    "receive_s": round(last - first, 3), "quiet_s": round(time.time() - last, 3)}
        self.store.drop_result(key)
        outcome = {}
        self.audit.write("received", key, **received)
        try:
            contents = self.runner.inspect(self.store.input_dir(key))
            kind = self.runner.choose(contents)
            self.say(f"study {key}: received {instances} instances "
                     f"({', '.join(f'{k} {n}' for k, n in contents.modalities.items())}); started {kind.value}")
            self.audit.write("started", key, job=kind.value, modalities=contents.modalities)
            result = self.runner.run(self.store.input_dir(key), self.store.result_dir(key), kind,
                                     lambda stage, message: self.say(f"study {key}: [{stage}] {message}"))
            outcome = {"job": kind.value, "files": len(result.files),
                       "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()}}
            error = None
        except FedrtError as exc:
            error = {"error": type(exc).__name__, "message": str(exc)}
        except Exception as exc:  # a bug in fedrt fails this study, never the node
            traceback.print_exc()
            error = {"error": type(exc).__name__, "message": f"a bug in fedrt ({exc}); please report it", "bug": True}
        job_s = round(time.perf_counter() - start, 3)
        if not self.tracker.finished(key, error is None):
            self.store.drop_result(key)
            self.say(f"study {key}: more instances arrived while it ran; it runs again when complete")
            return
        if error is None:
            self.audit.write("done", key, job_s=job_s, **outcome)
            self.say(f"study {key}: done in {job_s:.1f} s ({outcome['files']} DICOM file(s))")
            self.sender.submit(key, first)
        else:
            error["message"] = redact(error["message"], self.store.identifiers(key))
            self.store.mark_failed(key, {**error, "job_s": job_s})
            self.audit.write("failed", key, job_s=job_s, **error)
            self.say(f"study {key}: failed: {error['message']}")


def restore(store: StudyStore, tracker: StudyTracker, sender: Sender) -> dict[str, int]:
    """Put the studies on disk back in their states; unsent results are queued; returns counts per state."""
    counts = {state.value: 0 for state in State if state is not State.RUNNING}
    for key in store.study_keys():
        if store.has_result(key):
            tracker.restore(key, State.READY)
            sender.submit(key, store.arrival_span(key)[0] or None)
            counts[State.READY.value] += 1
        elif store.is_failed(key):
            tracker.restore(key, State.FAILED)
            counts[State.FAILED.value] += 1
        else:
            tracker.restore(key, State.RECEIVING)
            counts[State.RECEIVING.value] += 1
    return counts


def run_listener(settings: ListenerSettings, say: Callable[[str], None] = say_on_stderr) -> int:
    """Run the node until SIGTERM or SIGINT; returns the exit status (0 after a clean stop)."""
    store = StudyStore(settings.store)
    audit = AuditLog(settings.audit_log)
    say(f"loading {settings.seg_model}" + (f" and {settings.dose_model}" if settings.dose_model else ""))
    runner = JobRunner(settings)
    tracker = StudyTracker(settings.quiet_s)
    stop, abandon = threading.Event(), threading.Event()
    sender = Sender(settings, store, tracker, audit, say, stop)
    found = restore(store, tracker, sender)
    scp = StorageScp(settings, store, tracker, audit, say)
    port = scp.start()
    worker = Worker(runner, store, tracker, audit, sender, say, stop)

    def on_signal(signum: int, _frame: object) -> None:
        (abandon if stop.is_set() else stop).set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        sender.start()
        worker.start()
        audit.write("node-started", ae_title=settings.ae_title, host=settings.host, port=port,
                    allowed_callers=list(settings.allowed_callers), destination=str(settings.destination),
                    seg_model=settings.seg_model, dose_model=settings.dose_model, quiet_s=settings.quiet_s,
                    model_load_s=round(runner.load_s, 3), pid=os.getpid(), studies_on_disk=found)
        say(f"listening as {settings.ae_title} on {settings.host}:{port} (callers: "
            f"{', '.join(settings.allowed_callers)}); results go to {settings.destination}; "
            f"{found['ready']} unsent, {found['receiving']} to run")
        while not stop.wait(POLL_S):
            if not (worker.is_alive() and sender.is_alive()):
                audit.write("node-stopped", reason="an internal thread ended (a bug in fedrt; see stderr)")
                say("an internal thread ended (a bug in fedrt, please report it); stopping so the service restarts")
                return 1
        scp.stop()
        running = worker.current
        if running:
            say(f"stopping: study {running} finishes first (signal again to abandon it; it reruns at next start)")
        while worker.is_alive() and not abandon.is_set():
            worker.join(POLL_S)
        if worker.is_alive() and worker.current:
            audit.write("abandoned", worker.current, reason="stopped by a second signal; inputs kept, it runs "
                        "again at the next start")
            audit.write("node-stopped", abandoned=worker.current)
            say(f"abandoned study {worker.current}; its inputs are kept")
            sys.stderr.flush()
            os._exit(0)  # the job thread is inside torch or numpy and cannot be interrupted
        sender.join(timeout=TIMEOUT_JOIN_S)
        unsent = store_unsent(store)
        audit.write("node-stopped", unsent=unsent)
        say(f"stopped; {unsent} unsent result(s) kept for the next start" if unsent else "stopped; every result sent")
        return 0
    finally:
        scp.stop()
        stop.set()
        for s, handler in previous.items():
            signal.signal(s, handler)


def store_unsent(store: StudyStore) -> int:
    """How many studies have a result on disk that was not sent."""
    return sum(store.has_result(key) for key in store.study_keys())
