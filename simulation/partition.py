"""Partitioners: which patients each virtual hospital holds. ``iid`` deals them out evenly, ``skew`` in unequal
shares (given proportions or a seeded Dirichlet draw), ``sites`` from explicit lists. Each hospital gets a
folder of links to its patients (``train-pats/``, ``validation-pats/``), the same layout a real site's
``data-path`` has, so the ClientApp reads it the same way.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protocols.errors import ConfigError
from protocols.files import staged_folder
from protocols.splits import PatientSelection

PARTITIONERS = ("iid", "skew", "sites")


@dataclass
class VirtualSite:
    """One virtual hospital: its pseudonymous name, data folder and patient counts."""

    name: str
    path: Path
    train: list[Path]
    val: list[Path]


def _sizes(total: int, proportions: np.ndarray, min_cases: int = 0) -> list[int]:
    """Integer shares of ``total`` by largest remainder, then topped up to ``min_cases`` from the largest."""
    raw = total * proportions / proportions.sum()
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - sizes), kind="stable")[: total - sizes.sum()]:
        sizes[i] += 1
    if total >= min_cases * len(sizes):
        for i in range(len(sizes)):
            while sizes[i] < min_cases:
                sizes[int(np.argmax(sizes))] -= 1
                sizes[i] += 1
    return sizes.tolist()


def site_proportions(spec: dict[str, Any], num_sites: int, seed: int) -> np.ndarray:
    """Each hospital's share: equal for ``iid``, the given or Dirichlet-drawn proportions for ``skew``."""
    if spec["name"] != "skew":
        return np.full(num_sites, 1.0 / num_sites)
    if spec.get("proportions") is not None:
        proportions = np.asarray(spec["proportions"], dtype=float)
        if len(proportions) != num_sites or (proportions < 0).any() or proportions.sum() <= 0:
            raise ConfigError(f"partition.proportions {list(proportions)} must be {num_sites} non-negative numbers "
                              f"(one per site, num_sites={num_sites})")
        return proportions / proportions.sum()
    alpha = float(spec.get("alpha", 0.5))
    if alpha <= 0:
        raise ConfigError(f"partition.alpha must be positive, got {alpha}")
    return np.random.default_rng([seed, 7]).dirichlet(np.full(num_sites, alpha))


def _deal(folders: list[Path], sizes: list[int], seed: int) -> list[list[Path]]:
    order = np.random.default_rng(seed).permutation(len(folders))
    bounds = np.cumsum([0, *sizes])
    return [sorted((folders[i] for i in order[a:b]), key=folders.index) for a, b in itertools.pairwise(bounds)]


def _explicit(folders: list[Path], lists: list[list[str]], num_sites: int, what: str) -> list[list[Path]]:
    by_name = {f.name: f for f in folders}
    if len(lists) != num_sites:
        raise ConfigError(f"partition.{what} has {len(lists)} lists but num_sites={num_sites}; give one per site")
    seen: set[str] = set()
    out = []
    for names in lists:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ConfigError(f"partition.{what}: no patient folder {unknown[:3]} among the run's {what} patients "
                              f"(e.g. {list(by_name)[:3]})")
        repeated = seen.intersection(names)
        if repeated:
            raise ConfigError(f"partition.{what}: patients {sorted(repeated)[:3]} are given to more than one site")
        seen.update(names)
        out.append([by_name[n] for n in names])
    return out


def partition(folders: PatientSelection, spec: dict[str, Any], num_sites: int,
              seed: int) -> tuple[list[list[Path]], list[list[Path]]]:
    """Training and validation patient folders per site (validation patients split in the same shares)."""
    name = spec.get("name")
    if name not in PARTITIONERS:
        raise ConfigError(f"unknown partition {name!r}; choose partition={'|'.join(PARTITIONERS)}")
    if num_sites < 1:
        raise ConfigError(f"num_sites must be at least 1, got {num_sites}")
    shares = site_proportions(spec, num_sites, seed)
    if name == "sites":
        if not spec.get("train"):
            raise ConfigError("partition=sites needs partition.train: one list of patient folder names per site")
        train = _explicit(folders.train, spec["train"], num_sites, "train")
    else:
        if len(folders.train) < num_sites:
            raise ConfigError(f"{len(folders.train)} training patients cannot fill {num_sites} sites; "
                              f"lower num_sites or raise data.max_cases")
        train = _deal(folders.train, _sizes(len(folders.train), shares, int(spec.get("min_cases", 1))), seed)
    if name == "sites" and spec.get("val"):
        val = _explicit(folders.val, spec["val"], num_sites, "val")
    else:
        val = _deal(folders.val, _sizes(len(folders.val), shares), seed + 1)
    return train, val


def write_sites(dst: Path, train: list[list[Path]], val: list[list[Path]], train_split: str = "train-pats",
                val_split: str = "validation-pats") -> list[VirtualSite]:
    """One folder per site under ``dst`` holding links to its patients; replaces ``dst`` as a whole."""
    sites = []
    with staged_folder(dst, replace=True) as staging:
        for i, (site_train, site_val) in enumerate(zip(train, val, strict=True)):
            name = f"site-{i}"
            for split, patients in ((train_split, site_train), (val_split, site_val)):
                (staging / name / split).mkdir(parents=True)
                for patient in patients:
                    os.symlink(patient.resolve(), staging / name / split / patient.name, target_is_directory=True)
            sites.append(VirtualSite(name, dst / name, site_train, site_val))
    return sites
