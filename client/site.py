"""A site's data: where its patients are (``data-path`` in the node
config; in simulation the partitioner's folder for the virtual hospital), and its prepared cases, kept in
memory between rounds.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context

from models.tasks import Prepared
from protocols.case import Case
from protocols.errors import ConfigError, DataNotFoundError
from protocols.splits import load_cases, select_folders
from wire.plan import SitePlan
from wire.sites import DATA_CONFIG

Locator = Callable[[Context], Path]  # a virtual node's data folder (simulation: from its partition id)
CACHED_SITES = 4  # per process: a deployed node has one site; a simulation worker serves several in turn


@dataclass
class SiteData:
    """One site's training cases prepared for the loop, and its own validation cases."""

    train: list[Prepared]
    val: list[Case]


_cache: OrderedDict[tuple[str, str], SiteData] = OrderedDict()


def data_path(context: Context, locate: Locator | None = None) -> Path:
    """The site's dataset folder: ``data-path`` from the node config, else where ``locate`` (the simulation)
    puts a virtual hospital's patients.
    """
    config = context.node_config
    if DATA_CONFIG in config:
        return Path(str(config[DATA_CONFIG])).expanduser()
    if locate is not None:
        return locate(context)
    raise ConfigError("this node has no data path: start it with --node-config 'data-path=\"/path/to/dataset\"' "
                     "(a protocol dataset in the OpenKBP layout)")


def round_seed(base_seed: int, server_round: int, site: str) -> int:
    """A seed per run, round and site: reruns (and resumed runs) repeat every site's training exactly."""
    return int(np.random.SeedSequence([base_seed, server_round, zlib.crc32(site.encode())]).generate_state(1)[0])


def load_site(path: Path, plan: SitePlan) -> SiteData:
    """The site's cases under ``path`` (``train-pats``/``validation-pats`` or a held-out fraction), cached."""
    key = (str(path.resolve()), plan.data_key)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    if not path.is_dir():
        raise DataNotFoundError(f"site data folder {path} does not exist; check the node's data-path")
    train_dirs, val_dirs = select_folders(path, plan.selection)
    protocol = plan.task.protocol
    train = load_cases(train_dirs, protocol, plan.policy)
    data = SiteData([plan.task.prepare(case) for case in train], load_cases(val_dirs, protocol, plan.policy))
    _cache[key] = data
    while len(_cache) > CACHED_SITES:
        _cache.popitem(last=False)
    return data
