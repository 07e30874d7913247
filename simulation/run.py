"""``fedrt simulate``: N virtual hospitals on this machine (or a Ray cluster) through Flower's simulation engine,
running the same ClientApp and ServerApp as a real deployment.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from client.app import make_client_app
from models.centralized import data_config
from protocols.protocol import load_protocol
from protocols.splits import select_patients
from server.app import make_server_app
from server.federation import FederationOutcome, open_run
from simulation.partition import VirtualSite, partition, write_sites

log = logging.getLogger(__name__)

# Ray must neither phone home nor open a dashboard; the hospitals' machines are offline.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
           "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}


@dataclass
class SimulationOutcome:
    """The federated outcome plus the virtual hospitals and the wall time of the whole simulation."""

    federation: FederationOutcome
    sites: list[VirtualSite]
    seconds: float


def virtual_sites(config: DictConfig, dst: Path) -> list[VirtualSite]:
    """Partition the run's patients over ``num_sites`` hospitals and link each one's folder under ``dst``."""
    data = data_config(config)
    folders = select_patients(data, load_protocol(config.protocol), int(config.seed))
    train, val = partition(folders, OmegaConf.to_container(config.partition, resolve=True), int(config.num_sites),
                           int(config.seed))
    return write_sites(dst, train, val, data.train_split, data.val_split)


def backend_config(config: DictConfig) -> dict:
    """Ray settings: small per-hospital resources, no dashboard; a local Ray on loopback only, or an existing
    cluster if ``ray_address`` is set.
    """
    init_args: dict = {"include_dashboard": False}
    if config.simulation.ray_address:
        init_args["address"] = str(config.simulation.ray_address)
    return {"client_resources": {"num_cpus": float(config.simulation.cpus_per_site), "num_gpus": 0.0},
            "init_args": init_args}


def simulate(config: DictConfig) -> SimulationOutcome:
    """Run (or, with ``resume=``, continue) a federated simulation; Ray is shut down whatever happens."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if not config.simulation.ray_address:
        # A single-machine Ray: every Ray process listens on 127.0.0.1 only, never on the machine's network
        # address (Ray reads this switch, named for Windows/macOS, when it is imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from flwr.simulation import run_simulation

    start = time.perf_counter()
    logging.getLogger("flwr").propagate = False  # Flower logs through its own handler; do not print twice
    config = copy.deepcopy(config)
    if config.train.threads is None:
        config.train.threads = int(config.simulation.threads_per_site)
    tracker, config = open_run(config)
    outcome: list[FederationOutcome] = []
    try:
        sites_dir = Path(config.simulation.sites_dir or Path("runs") / "sites" / tracker.run_id)
        sites = virtual_sites(config, sites_dir)
        for site in sites:
            log.info("%s: %d training, %d validation patients (%s)", site.name, len(site.train), len(site.val),
                     site.path)
        server_app = make_server_app(config, on_done=outcome.append, tracker=tracker)
        client_app = make_client_app({i: str(site.path.resolve()) for i, site in enumerate(sites)})
        run_simulation(server_app, client_app, num_supernodes=len(sites), backend_config=backend_config(config))
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if not outcome:
        tracker.finish("FAILED")
        raise RuntimeError(f"the simulation ended without finishing run {tracker.run_id}; see the log above")
    return SimulationOutcome(outcome[0], sites, time.perf_counter() - start)
