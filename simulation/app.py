"""fedrt as a Flower App on Flower's simulation runtime: the ServerApp and ClientApp that ``flwr run .`` (the
``[tool.flwr.app]`` of ``pyproject.toml``) and ``fedrt simulate`` run. The ServerApp partitions the run's patients
over the virtual hospitals (one folder of links per hospital) and runs the same federation as a deployment; each
virtual SuperNode's ClientApp, the deployment's ClientApp, trains on its hospital's folder.

Run config: ``overrides`` (Hydra overrides, e.g. ``"preset=smoke rounds=2"``) or ``config`` (a composed
config, JSON); ``sites-dir`` where the hospitals' folders go (empty: under the fedrt cache, one per Flower run);
``outcome-file`` where the ServerApp writes how the run ended (``fedrt simulate`` reads it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from client.app import make_client_app
from models.centralized import data_config
from protocols.files import atomic_write, cache_dir
from protocols.protocol import load_protocol
from protocols.splits import select_patients
from server.deployed import CONFIG_KEY, OVERRIDES_KEY, config_from_run, serve
from server.federation import FederationOutcome, open_run
from simulation.partition import VirtualSite, partition, write_sites
from wire.sites import PARTITION_CONFIG

log = logging.getLogger(__name__)

APPS = ("simulation.app:server_app", "simulation.app:client_app")  # the components ``pyproject.toml`` names too
SITES_KEY = "sites-dir"
OUTCOME_KEY = "outcome-file"
RUN_CONFIG_DEFAULTS = {OVERRIDES_KEY: "", CONFIG_KEY: "", SITES_KEY: "", OUTCOME_KEY: ""}


def sites_dir(context: Context) -> Path:
    """Where this run's virtual hospitals' folders are: the run config's ``sites-dir``, else one folder per Flower
    run under the fedrt cache (the ServerApp and every ClientApp of the run compute the same).
    """
    given = str(context.run_config.get(SITES_KEY, ""))
    return Path(given) if given else cache_dir() / "sites" / f"flower-run-{context.run_id}"


def virtual_sites(config: DictConfig, dst: Path) -> list[VirtualSite]:
    """Partition the run's patients over ``num_sites`` hospitals and link each one's folder under ``dst``."""
    data = data_config(config)
    folders = select_patients(data, load_protocol(config.protocol), int(config.seed))
    train, val = partition(folders, OmegaConf.to_container(config.partition, resolve=True), int(config.num_sites),
                           int(config.seed))
    return write_sites(dst, train, val, data.train_split, data.val_split)


def simulation_config(config: DictConfig, num_nodes: int) -> DictConfig:
    """The run's config on this federation: ``num_sites`` is the number of virtual SuperNodes, each site's torch
    threads default to ``simulation.threads_per_site``.
    """
    config = config.copy()
    if int(config.num_sites) != num_nodes:
        log.warning("the federation has %d virtual SuperNodes: num_sites=%s becomes %d", num_nodes,
                    config.num_sites, num_nodes)
        config.num_sites = num_nodes
    if config.train.threads is None:
        config.train.threads = int(config.simulation.threads_per_site)
    return config


def write_outcome(path: Path, outcome: FederationOutcome, sites: list[VirtualSite]) -> None:
    """How the run ended, for the process that started the simulation."""
    record = {"federation": dataclasses.asdict(outcome), "sites": [dataclasses.asdict(s) for s in sites]}
    atomic_write(path, json.dumps(record, default=str))


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Partition the patients over the virtual hospitals, then run the federation as a deployment does."""
    nodes = len(list(grid.get_node_ids()))
    tracker, config = open_run(simulation_config(config_from_run(dict(context.run_config)), nodes))
    config = simulation_config(config, nodes)  # a resumed run continues with the config it recorded
    try:
        sites = virtual_sites(config, sites_dir(context))
    except BaseException:
        tracker.finish("FAILED")
        raise
    for site in sites:
        print(f"fedrt: {site.name}: {len(site.train)} training, {len(site.val)} validation patients", flush=True)
    outcome = serve(grid, config, tracker)
    if outcome_file := str(context.run_config.get(OUTCOME_KEY, "")):
        write_outcome(Path(outcome_file), outcome, sites)


def _site_folder(context: Context) -> Path:
    return sites_dir(context) / f"site-{int(context.node_config[PARTITION_CONFIG])}"


client_app = make_client_app(_site_folder)
