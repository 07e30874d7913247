"""Submit a fedrt federated run to a running SuperLink over TLS (the Control API call ``flwr run`` makes) and
follow it (``server.follow``): stream the ServerApp's output (progress, one summary per round) until the run
ends, across a server restart, then report how it ended.
The submitted Flower app names the installed fedrt's apps and installs nothing (offline sites).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import httpx
from flwr.cli.build import build_fab_from_disk
from flwr.common.serde import fab_to_proto, user_config_to_proto
from flwr.proto.control_pb2 import StartRunRequest
from flwr.proto.federation_config_pb2 import SimulationConfig
from flwr.supercore.fab import Fab

from protocols.errors import DeploymentError
from server.deployed import DEPLOYED_APPS, OVERRIDES_KEY, encode_overrides, write_app_definition
from server.follow import RunResult, follow_run, run_status
from wire.connection import connection_failure
from wire.control import ControlAccess


@dataclass(frozen=True)
class SubmittedApp:
    """What a run starts: the (ServerApp, ClientApp) components, the run config, and for Flower's simulation
    runtime the virtual federation (number of SuperNodes, their resources).
    """

    components: tuple[str, str]
    run_config: dict[str, str]
    simulation: SimulationConfig | None = None


def build_app_fab(components: tuple[str, str] = DEPLOYED_APPS, config: dict[str, str] | None = None) -> Fab:
    """The Flower app (FAB) fedrt submits: its definition only; the code is the fedrt installed at each site."""
    with tempfile.TemporaryDirectory(prefix="fedrt-app-") as tmp:
        content = build_fab_from_disk(write_app_definition(Path(tmp) / "fedrt", components, config))
    return Fab(hashlib.sha256(content).hexdigest(), content, {})


def submit_run(access: ControlAccess, overrides: list[str], follow: bool = True, out: TextIO | None = None,
               poll_s: float = 2.0, app: SubmittedApp | None = None) -> RunResult:
    """Start a run of fedrt's apps with ``overrides`` on the server ``access`` reaches; with ``follow``, print
    the ServerApp's output to ``out`` (default: stdout) until the run finishes, and return how it ended.
    ``app``: another app and run config than the deployment's (the simulation's).
    """
    out = out or sys.stdout
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP call is noise here
    app = app or SubmittedApp(DEPLOYED_APPS, {OVERRIDES_KEY: encode_overrides(overrides)})
    client = access.client()
    try:
        request = StartRunRequest(fab=fab_to_proto(build_app_fab(app.components, app.run_config)),
                                  override_config=user_config_to_proto(app.run_config),
                                  override_federation_config=app.simulation)
        try:
            response = client.StartRun(request)
        except httpx.TransportError as exc:
            raise DeploymentError(connection_failure(access.endpoint, access.ca, access.insecure, exc)) from exc
        if not response.HasField("run_id"):
            raise DeploymentError(f"the SuperLink at {access.endpoint} did not start the run; see its superlink.log")
        run_id = response.run_id
        print(f"fedrt: submitted run {run_id} to {access.endpoint}", file=out, flush=True)
        if not follow:
            return run_status(client, run_id)
    finally:
        client.close()
    return follow_run(access.client, run_id, out, poll_s)


def attach_run(access: ControlAccess, run_id: int, out: TextIO | None = None) -> RunResult:
    """Follow run ``run_id``, already submitted, to its end (``fedrt run --follow``)."""
    client = access.client()
    try:
        run_status(client, run_id)  # an unknown run is an error now, not a silent wait
    except httpx.TransportError as exc:
        raise DeploymentError(connection_failure(access.endpoint, access.ca, access.insecure, exc)) from exc
    finally:
        client.close()
    return follow_run(access.client, run_id, out or sys.stdout)
