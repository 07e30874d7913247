"""A site's identity and data: its pseudonymous name, where its patients are (``data-path`` in the node
config; in simulation the partitioner's folder for the virtual hospital), and its prepared cases, kept in
memory between rounds.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context

from client.settings import SitePlan
from models.tasks import Prepared
from protocols.case import Case
from protocols.openkbp import load_openkbp_case
from protocols.splits import split_dirs

CACHED_SITES = 4  # per process: a deployed node has one site; a simulation worker serves several in turn


@dataclass
class SiteData:
    """One site's training cases prepared for the loop, and its own validation cases."""

    train: list[Prepared]
    val: list[Case]


_cache: OrderedDict[tuple[str, str], SiteData] = OrderedDict()


def site_name(context: Context) -> str:
    """The name this site reports: ``site-name`` from the node config, ``site-<partition>`` in simulation,
    else a digest of the node id. Never a hospital's or a patient's identity unless the operator sets one.
    """
    config = context.node_config
    if "site-name" in config:
        return str(config["site-name"])
    if "partition-id" in config:
        return f"site-{int(config['partition-id'])}"
    return "node-" + hashlib.sha256(str(context.node_id).encode()).hexdigest()[:8]


def data_path(context: Context, site_paths: Mapping[int, str] | None = None) -> Path:
    """The site's dataset folder: ``data-path`` from the node config, else the simulation's folder for it."""
    config = context.node_config
    if "data-path" in config:
        return Path(str(config["data-path"])).expanduser()
    if site_paths is not None and "partition-id" in config:
        return Path(site_paths[int(config["partition-id"])])
    raise ValueError("this node has no data path: start it with --node-config 'data-path=\"/path/to/dataset\"' "
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
        raise FileNotFoundError(f"site data folder {path} does not exist; check the node's data-path")
    train_dirs, val_dirs = split_dirs(path, plan.train_split, plan.val_split, plan.val_fraction)
    protocol = plan.task.protocol
    train = [case for d in train_dirs if (case := load_openkbp_case(d, protocol, plan.policy)[0]) is not None]
    val = [case for d in val_dirs if (case := load_openkbp_case(d, protocol, plan.policy)[0]) is not None]
    data = SiteData([plan.task.prepare(case) for case in train], val)
    _cache[key] = data
    while len(_cache) > CACHED_SITES:
        _cache.popitem(last=False)
    return data
