"""Partitioners: iid near-equal shares, skew by proportions (16/12/8/4 of 40) or a seeded Dirichlet draw,
explicit site lists, and the per-site folders of links the ClientApp reads like a real data-path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.protocol import load_protocol
from protocols.splits import PatientSelection
from simulation.partition import partition, write_sites


def folders(n_train: int, n_val: int, root: Path = Path("/data")) -> PatientSelection:
    return PatientSelection(root, load_protocol("hn-openkbp"),
                          [root / "train-pats" / f"pt_{i}" for i in range(1, n_train + 1)],
                          [root / "validation-pats" / f"pt_{i}" for i in range(201, 201 + n_val)])


def sizes(parts):
    return [len(p) for p in parts]


def test_iid_deals_every_patient_once_in_near_equal_shares():
    run = folders(10, 3)
    train, val = partition(run, {"name": "iid"}, 3, seed=0)
    assert sorted(sizes(train)) == [3, 3, 4] and sorted(sizes(val)) == [1, 1, 1]
    assert sorted(p for part in train for p in part) == sorted(run.train)
    assert partition(run, {"name": "iid"}, 3, seed=0) == (train, val)
    assert partition(run, {"name": "iid"}, 3, seed=1)[0] != train


def test_skew_with_proportions_gives_the_benchmark_split():
    train, val = partition(folders(40, 10), {"name": "skew", "proportions": [0.4, 0.3, 0.2, 0.1]}, 4, seed=0)
    assert sizes(train) == [16, 12, 8, 4]
    assert sizes(val) == [4, 3, 2, 1]


def test_skew_dirichlet_is_seeded_unequal_and_leaves_no_site_empty():
    spec = {"name": "skew", "proportions": None, "alpha": 0.3, "min_cases": 1}
    train, _ = partition(folders(40, 10), spec, 6, seed=3)
    assert sum(sizes(train)) == 40 and min(sizes(train)) >= 1
    assert max(sizes(train)) > 2 * min(sizes(train))
    assert partition(folders(40, 10), spec, 6, seed=3)[0] == train


def test_sites_uses_the_explicit_lists_and_rejects_unknown_or_repeated_patients():
    spec = {"name": "sites", "train": [["pt_1", "pt_3"], ["pt_2"]], "val": None}
    train, val = partition(folders(3, 2), spec, 2, seed=0)
    assert [[p.name for p in part] for part in train] == [["pt_1", "pt_3"], ["pt_2"]]
    assert sorted(sizes(val)) == [1, 1]
    with pytest.raises(ValueError, match="no patient folder"):
        partition(folders(3, 2), {"name": "sites", "train": [["pt_9"], ["pt_2"]]}, 2, seed=0)
    with pytest.raises(ValueError, match="more than one site"):
        partition(folders(3, 2), {"name": "sites", "train": [["pt_1"], ["pt_1"]]}, 2, seed=0)
    with pytest.raises(ValueError, match="one per site"):
        partition(folders(3, 2), spec, 3, seed=0)


def test_bad_settings_name_the_fix():
    with pytest.raises(ValueError, match="partition=iid"):
        partition(folders(4, 1), {"name": "random"}, 2, seed=0)
    with pytest.raises(ValueError, match="lower num_sites"):
        partition(folders(2, 1), {"name": "iid"}, 3, seed=0)
    with pytest.raises(ValueError, match="one per site"):
        partition(folders(4, 1), {"name": "skew", "proportions": [1, 1, 1]}, 2, seed=0)


def test_site_folders_link_each_hospitals_patients_in_the_dataset_layout(tmp_path):
    run = folders(3, 1, root=tmp_path / "data")
    for patient in run.train + run.val:
        patient.mkdir(parents=True)
        (patient / "ct.csv").write_text(",data\n")
    train, val = partition(run, {"name": "iid"}, 2, seed=0)
    sites = write_sites(tmp_path / "sites", train, val)
    assert [s.name for s in sites] == ["site-0", "site-1"]
    for site, site_train, site_val in zip(sites, train, val, strict=True):
        linked = sorted((site.path / "train-pats").iterdir())
        assert [p.name for p in linked] == sorted(p.name for p in site_train)
        assert all(p.is_symlink() and (p / "ct.csv").is_file() for p in linked)
        assert len(list((site.path / "validation-pats").iterdir())) == len(site_val)
    again = write_sites(tmp_path / "sites", val, val)
    assert sorted(p.name for p in (again[0].path / "train-pats").iterdir()) == sorted(p.name for p in val[0])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
