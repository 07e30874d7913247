"""A server restarted after a crash resumes what the crash cut off, by itself: for every run the journal still
marks running, it submits a run with ``resume=<MLflow run id>`` (the rounds continue from the last round
checkpoint, in the same MLflow run), stops the dead Flower run (so its followers and nodes let it go), and records
the decision in the MLflow run.
"""

from __future__ import annotations

import io
import logging
import time

import httpx
from flwr.proto.control_pb2 import StopRunRequest
from mlflow import MlflowClient

from protocols.errors import DeploymentError
from server.follow import run_status
from server.journal import RESUMED, STOPPED, JournalEntry, RunJournal
from server.submit import submit_run
from wire.control import ControlAccess

log = logging.getLogger(__name__)
RESUMED_TAG = "fedrt.resumed_after_restart"


def resume_interrupted(journal: RunJournal, access: ControlAccess) -> list[int]:
    """Resume each interrupted run on the SuperLink ``access`` reaches; the new Flower run ids."""
    resumed = []
    for entry in journal.interrupted():
        if _stopped(access, entry.flower_run_id):  # an operator stopped it (its ServerApp had no time to say so)
            journal.mark(entry, STOPPED)
            continue
        try:
            new_run = submit_run(access, [f"resume={entry.mlflow_run_id}", f"tracking.uri={entry.tracking_uri}"],
                                 follow=False, out=io.StringIO()).run_id
            _stop(access, entry.flower_run_id)
            journal.mark(entry, RESUMED, resumed_by=new_run)
            _record(entry, new_run)
        except Exception as exc:  # one run that cannot be resumed must not keep the server down
            log.error("could not resume MLflow run %s (Flower run %d): %s; resume it by hand with resume=%s",
                      entry.mlflow_run_id, entry.flower_run_id, exc, entry.mlflow_run_id)
            continue
        log.warning("resumed MLflow run %s (Flower run %d, cut off by the server's restart) as Flower run %d",
                    entry.mlflow_run_id, entry.flower_run_id, new_run)
        resumed.append(new_run)
    return resumed


def _stopped(access: ControlAccess, run_id: int) -> bool:
    """Whether Flower run ``run_id`` was stopped (``fedrt server stop-run``); a run the server lost is not."""
    client = access.client()
    try:
        return run_status(client, run_id).sub_status == "stopped"
    except (DeploymentError, httpx.HTTPError):  # the SuperLink has no such run: it was cut off before it was stored
        return False
    finally:
        client.close()


def _stop(access: ControlAccess, run_id: int) -> None:
    client = access.client()
    try:
        client.StopRun(StopRunRequest(run_id=run_id))
    except httpx.HTTPError as exc:  # already finished: nothing is left to stop
        log.info("Flower run %d was not stopped (%s)", run_id, exc)
    finally:
        client.close()


def _record(entry: JournalEntry, new_run: int) -> None:
    MlflowClient(tracking_uri=entry.tracking_uri).set_tag(
        entry.mlflow_run_id, RESUMED_TAG,
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}: Flower run {entry.flower_run_id} was cut off by a server restart; "
        f"resumed from its last round checkpoint as Flower run {new_run}")
