"""``fedrt simulate``: N virtual hospitals on this machine (or a Ray cluster) through Flower's simulation runtime,
the supported way ``flwr run`` takes: a private SuperLink in simulation mode on a free loopback port runs the
Flower App of ``simulation.app`` (the deployment's ServerApp and ClientApp), and is stopped, with everything it
started, when the run ends, fails or this process gets SIGTERM.

Ray is the simulation's own (``address="local"``) unless ``simulation.ray_address`` names a cluster: a cluster
recorded by an earlier ``ray start`` is never attached to by accident.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flwr.proto.federation_config_pb2 import SimulationConfig
from omegaconf import DictConfig

from protocols.errors import ConfigError, DeploymentError
from server.deployed import CONFIG_KEY, encode_config
from server.federation import FederationOutcome
from server.rounds import RoundReport
from server.submit import SubmittedApp, submit_run
from server.superlink import INSECURE_HOST, SuperLinkSettings, start_superlink
from simulation.app import APPS, OUTCOME_KEY, RUN_CONFIG_DEFAULTS, SITES_KEY
from simulation.partition import VirtualSite
from wire.control import ControlAccess
from wire.endpoint import Endpoint
from wire.processes import stop_process, wait_until_listening

# Ray must neither phone home nor open a dashboard; the hospitals' machines are offline.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
# A single-machine Ray: its own (never one an earlier `ray start` recorded), every process on 127.0.0.1 only (Ray
# reads this switch, named for Windows/macOS, when it is imported).
LOCAL_RAY_ENV = {"RAY_ADDRESS": "local", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@dataclass
class SimulationOutcome:
    """The federated outcome plus the virtual hospitals and the wall time of the whole simulation."""

    federation: FederationOutcome
    sites: list[VirtualSite]
    seconds: float


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((INSECURE_HOST, 0))
        return int(sock.getsockname()[1])


def ray_environment(config: DictConfig) -> dict[str, str]:
    """The simulation's Ray: its own on loopback, or the cluster ``simulation.ray_address`` names."""
    if config.simulation.ray_address:
        return {**RAY_ENV, "RAY_ADDRESS": str(config.simulation.ray_address)}
    return {**RAY_ENV, **LOCAL_RAY_ENV}


def federation(config: DictConfig) -> SimulationConfig:
    """Flower's simulated federation: one SuperNode per hospital, each with its share of CPUs."""
    cpus = float(config.simulation.cpus_per_site)
    if cpus < 1 or not cpus.is_integer():
        raise ConfigError(f"simulation.cpus_per_site={config.simulation.cpus_per_site}: Flower's simulation runtime "
                          "gives each virtual hospital a whole number of CPUs; give 1 or more")
    return SimulationConfig(num_supernodes=int(config.num_sites), client_resources_num_cpus=int(cpus),
                            client_resources_num_gpus=0.0)


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit`` for the duration, so the cleanup below runs (and the process exits 143)."""
    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_outcome(path: Path, seconds: float) -> SimulationOutcome:
    record = json.loads(path.read_text())
    fed = record["federation"]
    outcome = FederationOutcome(**{**fed, "checkpoint": Path(fed["checkpoint"]),
                                   "reports": [RoundReport(**r) for r in fed["reports"]]})
    sites = [VirtualSite(s["name"], Path(s["path"]), [Path(p) for p in s["train"]], [Path(p) for p in s["val"]])
             for s in record["sites"]]
    return SimulationOutcome(outcome, sites, seconds)


def simulate(config: DictConfig) -> SimulationOutcome:
    """Run (or, with ``resume=``, continue) a federated simulation of ``config``; its output streams to stdout."""
    start = time.perf_counter()
    sites_dir = Path(config.simulation.sites_dir or Path("runs") / "sites" / time.strftime("%Y%m%d-%H%M%S"))
    with tempfile.TemporaryDirectory(prefix="fedrt-simulation-") as tmp, _sigterm_stops():
        outcome_file = Path(tmp) / "outcome.json"
        settings = SuperLinkSettings(Path(tmp) / "superlink", host=INSECURE_HOST, port=_free_port(), insecure=True,
                                     simulation=True, workdir=Path.cwd())
        run_config = {**RUN_CONFIG_DEFAULTS, CONFIG_KEY: encode_config(config),
                      SITES_KEY: str(sites_dir.resolve()), OUTCOME_KEY: str(outcome_file)}
        superlink = start_superlink(settings, settings.state_dir / "console.log", ray_environment(config))
        try:
            wait_until_listening(superlink, settings.host, settings.port, settings.state_dir / "console.log")
            result = submit_run(ControlAccess(Endpoint(settings.host, settings.port), insecure=True), [],
                                app=SubmittedApp(APPS, run_config, federation(config)))
        finally:
            stop_process(superlink)
        if not result.completed or not outcome_file.is_file():
            raise DeploymentError(f"the simulation ended {result.status}:{result.sub_status} ({result.details}); "
                                  "the output above says why; a run with round checkpoints resumes with "
                                  "resume=<MLflow run id>")
        return _read_outcome(outcome_file, time.perf_counter() - start)
