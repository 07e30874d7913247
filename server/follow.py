"""Follow a submitted run to its end: stream the ServerApp's output, and keep following across a server restart.
When the server goes away the follower waits for it to come back, then follows the run that resumes the same
MLflow run (the restarted server submits it: ``server.resume``) instead of dying with a transport error.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import httpx
from flwr.common.serde import user_config_from_proto
from flwr.proto.control_pb2 import ListRunsRequest, StreamLogsRequest
from flwr.supercore.control import ControlHttpClient

from protocols.errors import DeploymentError
from server.deployed import OVERRIDES_KEY, decode_overrides

MLFLOW_RUN = re.compile(r"MLflow run ([0-9a-f]{32})")  # the ServerApp's first line names its MLflow run
Connect = Callable[[], ControlHttpClient]
RESUME_WAIT_S = 60.0  # how long a follower looks for the run resuming a stopped one


@dataclass(frozen=True)
class RunResult:
    """How a run ended: Flower's run id, status (``finished``) and sub-status (``completed``, ...)."""

    run_id: int
    status: str
    sub_status: str
    details: str

    @property
    def completed(self) -> bool:
        """Whether the ServerApp ran to its end without an error."""
        return self.status == "finished" and self.sub_status == "completed"


def run_status(client: ControlHttpClient, run_id: int) -> RunResult:
    """Where Flower run ``run_id`` stands now; an error naming the fix when the SuperLink has no such run."""
    runs = client.ListRuns(ListRunsRequest(run_id=run_id)).run_dict
    if run_id not in runs:
        raise DeploymentError(f"the SuperLink has no run {run_id}; list its runs with `flwr ls` or check the id")
    run = runs[run_id]
    return RunResult(run_id, run.status.status, run.status.sub_status, run.status.details)


def resuming_run(client: ControlHttpClient, mlflow_run_id: str) -> int | None:
    """The newest Flower run that resumes MLflow run ``mlflow_run_id`` (its overrides hold ``resume=<id>``)."""
    found = []
    for run_id, run in client.ListRuns(ListRunsRequest()).run_dict.items():
        config = user_config_from_proto(run.override_config)
        if OVERRIDES_KEY in config and f"resume={mlflow_run_id}" in decode_overrides(config):
            found.append((run.pending_at, run_id))
    return max(found)[1] if found else None


def _stream(client: ControlHttpClient, run_id: int, out: TextIO, seen: list[str], after: float) -> float:
    """Print the run's output after timestamp ``after`` until it ends; the last timestamp printed."""
    for chunk in client.StreamLogs(StreamLogsRequest(run_id=run_id, after_timestamp=after)):
        out.write(chunk.log_output)
        out.flush()
        seen.extend(MLFLOW_RUN.findall(chunk.log_output))
        after = max(after, chunk.latest_timestamp)
    return after


def _finished(client: ControlHttpClient, run_id: int, poll_s: float) -> RunResult:
    while (result := run_status(client, run_id)).status != "finished":
        time.sleep(poll_s)
    return result


def _unavailable(error: httpx.HTTPError) -> bool:
    """The server is down or restarting: no connection, or its proxy up before the SuperLink behind it (5xx)."""
    return isinstance(error, httpx.TransportError) or (
        isinstance(error, httpx.HTTPStatusError) and error.response.status_code >= 500)


def _reconnect(connect: Connect, wait_s: float, poll_s: float) -> ControlHttpClient:
    deadline = time.monotonic() + wait_s
    while True:
        client = connect()
        try:
            client.ListRuns(ListRunsRequest())
            return client
        except httpx.HTTPError as exc:
            client.close()
            if not _unavailable(exc):
                raise
            if time.monotonic() > deadline:
                raise DeploymentError(f"the server did not come back within {wait_s:g} s; when it is up again, "
                                      "follow the run with `fedrt run --follow RUN_ID`") from None
            time.sleep(poll_s)


def _successor(client: ControlHttpClient, mlflow_run_id: str, run_id: int, wait_s: float,
               poll_s: float) -> int | None:
    """The run that took over a stopped run's MLflow run, waiting ``wait_s`` for the server to submit it."""
    deadline = time.monotonic() + wait_s
    while (successor := resuming_run(client, mlflow_run_id)) in (None, run_id):
        if time.monotonic() > deadline:
            return None
        time.sleep(poll_s)
    return successor


def follow_run(connect: Connect, run_id: int, out: TextIO, poll_s: float = 2.0,
               reconnect_s: float = 900.0) -> RunResult:
    """Print run ``run_id``'s output until it ends and return how it ended. Across a server restart: wait up
    to ``reconnect_s`` for the server, and when the restarted server stopped the run and resumed its MLflow run
    in a new one, follow that.
    """
    mlflow_runs: list[str] = []
    after = 0.0
    client = connect()
    try:
        while True:
            try:
                after = _stream(client, run_id, out, mlflow_runs, after)
                result = _finished(client, run_id, poll_s)
                if result.sub_status != "stopped" or not mlflow_runs:
                    return result
                successor = _successor(client, mlflow_runs[-1], run_id, RESUME_WAIT_S, poll_s)
            except httpx.HTTPError as exc:
                if not _unavailable(exc):
                    raise
                print(f"fedrt: lost the server while following run {run_id}; waiting up to {reconnect_s:g} s for it "
                      "to come back", file=out, flush=True)
                client.close()
                client = _reconnect(connect, reconnect_s, poll_s)
                continue  # the same run again, from where its output stopped
            if successor is None:
                return result
            print(f"fedrt: following run {successor}, which resumes MLflow run {mlflow_runs[-1]} after the server's "
                  "restart", file=out, flush=True)
            run_id, after = successor, 0.0
    finally:
        client.close()
