"""Generated phantoms: written in OpenKBP's layout, read back cleanly, plausible, deterministic, atomic."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from fedrt.commands import phantoms as phantoms_command
from protocols import phantom
from protocols.dataset import ProtocolDataset
from protocols.errors import OutputError
from protocols.openkbp import load_openkbp_case
from protocols.phantom import (
    ensure_phantom_dataset,
    generate_phantom,
    phantom_cache_path,
    phantom_grid,
    phantom_protocol,
    write_phantom_dataset,
)
from protocols.protocol import protocol_from_dict
from protocols.validation import Policy

SHAPE = (64, 64, 64)
N = 8


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, protocol) -> Path:
    dst = tmp_path_factory.mktemp("phantoms") / "hn"
    write_phantom_dataset(dst, protocol, N, seed=0, shape=SHAPE)
    return dst


@pytest.fixture(scope="module")
def small_cases(small_dataset, protocol, tmp_path_factory) -> list:
    dataset = ProtocolDataset(
        small_dataset, phantom_protocol(protocol, SHAPE), Policy.RAISE, cache_dir=tmp_path_factory.mktemp("c")
    )
    return list(dataset.cases())


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_has_the_openkbp_layout(small_dataset, protocol):
    assert sorted(p.name for p in small_dataset.iterdir() if p.is_dir()) == sorted(
        f"pt_{i}" for i in range(1, 9)
    )
    pt = small_dataset / "pt_1"
    for name in ("ct", "dose", "possible_dose_mask", "voxel_dimensions"):
        assert (pt / f"{name}.csv").is_file()
    lines = (pt / "ct.csv").read_text().splitlines()
    assert lines[0] == ",data"
    index, value = lines[1].split(",")
    assert int(index) >= 0 and float(value) > 0  # CT stored as HU + 1000: only non-air voxels listed
    mask_lines = (pt / "PTV70.csv").read_text().splitlines()
    assert mask_lines[0] == ",data" and all(line.endswith(",") for line in mask_lines[1:])
    spacing = [float(v) for v in (pt / "voxel_dimensions.csv").read_text().split()]
    assert spacing == pytest.approx([7.812, 7.812, 5.0])
    manifest = json.loads((small_dataset / phantom.MANIFEST).read_text())
    assert (
        manifest["n_patients"] == N and manifest["shape"] == list(SHAPE) and "synthetic" in manifest["dose"]
    )


def test_every_phantom_reads_back_without_findings(small_dataset, small_cases, protocol, tmp_path):
    dataset = ProtocolDataset(
        small_dataset, phantom_protocol(protocol, SHAPE), Policy.RAISE, cache_dir=tmp_path
    )
    reports = dataset.reports()
    assert len(reports) == N
    assert all(r.status == "ok" for r in reports), [str(f) for r in reports for f in r.findings]
    assert len(small_cases) == N
    for case in small_cases:
        assert case.shape == SHAPE and case.ct_hu.dtype == np.float32
        assert case.spacing_mm == pytest.approx((7.812, 7.812, 5.0))
        assert case.dose_gy.shape == SHAPE and case.possible_dose_mask.shape == SHAPE


def test_full_size_phantom_is_on_the_protocol_grid(protocol, tmp_path):
    write_phantom_dataset(tmp_path / "full", protocol, 1, seed=3)
    case, report = load_openkbp_case(tmp_path / "full" / "pt_1", protocol, Policy.RAISE, cache_dir=tmp_path)
    assert report.status == "ok"
    assert case.shape == protocol.grid.shape == (128, 128, 128)
    assert case.spacing_mm == protocol.grid.spacing_mm
    assert case.dose_gy[case.structures["PTV70"]].max() == pytest.approx(70.0, abs=0.01)


def test_ct_is_in_hounsfield_units_with_air_outside_the_body(small_cases):
    for case in small_cases:
        body = case.possible_dose_mask
        assert case.ct_hu.min() == -1000.0
        assert np.all(case.ct_hu[~body] == -1000.0)
        assert -100.0 < np.median(case.ct_hu[body]) < 100.0  # mostly soft tissue
        assert 900.0 < case.ct_hu.max() < 1600.0  # bone
        assert (case.ct_hu[body] > 500.0).mean() > 0.005


def test_dose_is_at_prescription_in_targets_and_falls_off_outside(small_cases, protocol):
    for case in small_cases:
        dose, body = case.dose_gy, case.possible_dose_mask
        ptv70 = case.structures["PTV70"]
        assert dose[ptv70].max() == pytest.approx(70.0, abs=0.01)
        assert np.percentile(dose[ptv70], 1) == pytest.approx(70.0, abs=0.01)
        assert dose.max() == pytest.approx(70.0, abs=0.01)
        for name in ("PTV63", "PTV56"):
            if name in case.structures:
                rx = protocol.prescriptions_gy[name]
                assert dose[case.structures[name]].min() >= rx - 0.01
        assert np.all(dose[~body] == 0.0) and dose[body].min() > 0.0
        targets = np.logical_or.reduce([case.structures[n] for n in protocol.targets if n in case.structures])
        near = _shell(targets, 1, 3) & body
        far = _shell(targets, 8, 12) & body
        assert dose[near].mean() > dose[far].mean() + 10.0


def _shell(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=outer) & ~ndimage.binary_dilation(mask, iterations=inner)


def test_anatomy_follows_the_case_axes(small_cases):
    def centroid(case, name):
        return np.argwhere(case.structures[name]).mean(axis=0)

    for case in small_cases:
        s = case.structures
        if "LeftParotid" in s and "RightParotid" in s:
            assert (
                centroid(case, "LeftParotid")[1] > centroid(case, "RightParotid")[1] + 5
            )  # axis 1: right->left
        if "SpinalCord" in s and "Brainstem" in s:
            assert (
                centroid(case, "Brainstem")[2] < centroid(case, "SpinalCord")[2]
            )  # axis 2: superior->inferior
        if "SpinalCord" in s:
            for anterior in ("Mandible", "Larynx", "Esophagus"):
                if anterior in s:  # axis 0: anterior->posterior, the cord is posterior
                    assert centroid(case, anterior)[0] < centroid(case, "SpinalCord")[0]
        if "Larynx" in s and "Mandible" in s:
            assert centroid(case, "Larynx")[2] > centroid(case, "Mandible")[2]
        assert not (s["PTV70"] & s["PTV56"]).any()


def test_patients_vary_and_some_miss_an_oar(small_cases, protocol):
    centroids = np.array([np.argwhere(c.structures["PTV70"]).mean(axis=0) for c in small_cases])
    volumes = [int(c.structures["PTV70"].sum()) for c in small_cases]
    assert np.ptp(centroids, axis=0).max() > 5.0
    assert len(set(volumes)) == N
    assert any(set(protocol.oars) - set(c.structures) for c in small_cases)


def test_same_seed_gives_identical_files_and_another_seed_differs(small_dataset, protocol, tmp_path):
    again = write_phantom_dataset(tmp_path / "again", protocol, N, seed=0, shape=SHAPE)
    assert [p.name for p in again] == [f"pt_{i}" for i in range(1, N + 1)]
    assert _tree(tmp_path / "again") == _tree(small_dataset)
    write_phantom_dataset(tmp_path / "other", protocol, 2, seed=1, shape=SHAPE)
    other = _tree(tmp_path / "other")
    assert other["pt_1/ct.csv"] != _tree(small_dataset)["pt_1/ct.csv"]


def test_a_patient_does_not_depend_on_the_dataset_size(small_dataset, protocol, tmp_path):
    write_phantom_dataset(tmp_path / "two", protocol, 2, seed=0, shape=SHAPE)
    two = _tree(tmp_path / "two")
    assert {k: v for k, v in _tree(small_dataset).items() if k.startswith("pt_2/")} == {
        k: v for k, v in two.items() if k.startswith("pt_2/")
    }


def test_write_leaves_no_temporary_folder(tmp_path, protocol):
    write_phantom_dataset(tmp_path / "ds", protocol, 1, seed=0, shape=SHAPE)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_existing_empty_folder_is_filled(tmp_path, protocol):
    (tmp_path / "ds").mkdir()
    write_phantom_dataset(tmp_path / "ds", protocol, 1, seed=0, shape=SHAPE)
    assert (tmp_path / "ds" / "pt_1" / "ct.csv").is_file()


def test_refuses_a_non_empty_destination_unless_asked(tmp_path, protocol):
    dst = tmp_path / "ds"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match=f"{dst} exists and is not empty; choose another destination"):
        write_phantom_dataset(dst, protocol, 1, seed=0, shape=SHAPE)
    assert [p.name for p in dst.iterdir()] == ["keep.txt"]
    write_phantom_dataset(dst, protocol, 2, seed=0, shape=SHAPE, overwrite=True)
    assert sorted(p.name for p in dst.iterdir()) == [phantom.MANIFEST, "pt_1", "pt_2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_interrupted_write_leaves_nothing(tmp_path, protocol, monkeypatch):
    written = []

    def fail_on_second(case, patient_dir):
        if written:
            raise KeyboardInterrupt
        written.append(patient_dir)
        return real(case, patient_dir)

    real = phantom.write_openkbp_case
    monkeypatch.setattr(phantom, "write_openkbp_case", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        write_phantom_dataset(tmp_path / "ds", protocol, 3, seed=0, shape=SHAPE)
    assert written and list(tmp_path.iterdir()) == []


def test_ensure_generates_once_into_the_cache(tmp_path, protocol, monkeypatch):
    monkeypatch.setenv("FEDRT_CACHE", str(tmp_path))
    root = ensure_phantom_dataset(protocol, n_patients=2, seed=5, shape=SHAPE)
    assert (
        root
        == tmp_path / "phantoms" / "hn-openkbp-n2-s5-64x64x64"
        == phantom_cache_path(protocol, 2, 5, SHAPE)
    )
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["pt_1", "pt_2"]
    stamp = (root / "pt_1" / "ct.csv").stat().st_mtime_ns
    assert ensure_phantom_dataset(protocol, n_patients=2, seed=5, shape=SHAPE) == root
    assert (root / "pt_1" / "ct.csv").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "phantoms").iterdir()) == [root.name]


def test_ensure_regenerates_an_incomplete_cache(tmp_path, protocol, monkeypatch):
    monkeypatch.setenv("FEDRT_CACHE", str(tmp_path))
    root = ensure_phantom_dataset(protocol, n_patients=2, seed=5, shape=SHAPE)
    reference = _tree(root)
    for path in (root / "pt_2").iterdir():
        path.unlink()
    (root / "pt_2").rmdir()
    assert ensure_phantom_dataset(protocol, n_patients=2, seed=5, shape=SHAPE) == root
    assert _tree(root) == reference


def test_default_cache_path_uses_the_protocol_grid(protocol, monkeypatch, tmp_path):
    monkeypatch.setenv("FEDRT_CACHE", str(tmp_path))
    assert phantom_cache_path(protocol).name == "hn-openkbp-n8-s0-128x128x128"
    assert phantom_grid(protocol).spacing_mm == protocol.grid.spacing_mm


def test_protocol_with_unknown_structures_is_refused(tmp_path):
    other = protocol_from_dict(
        {
            "name": "prostate",
            "fractions": 20,
            "grid": {"shape": [64, 64, 64], "spacing_mm": [2, 2, 2]},
            "structures": [
                {"name": "Rectum", "kind": "oar"},
                {"name": "PTV", "kind": "target", "prescription_gy": 60},
            ],
        }
    )
    with pytest.raises(ValueError, match="Rectum"):
        write_phantom_dataset(tmp_path / "ds", other, 1, seed=0)
    assert not (tmp_path / "ds").exists()


def test_bad_shape_and_counts_are_refused(protocol, tmp_path):
    with pytest.raises(ValueError, match="shape"):
        phantom_grid(protocol, (8, 8, 8))
    with pytest.raises(ValueError, match="at least one"):
        write_phantom_dataset(tmp_path / "ds", protocol, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_phantom(protocol, seed=-1, patient=1, shape=SHAPE)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedrt")
    phantoms_command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_phantoms_command_writes_and_refuses_to_overwrite(tmp_path, capsys):
    dst = tmp_path / "ds"
    args = _cli(["phantoms", str(dst), "--n", "1", "--seed", "2"])
    assert args.run(args) == 0
    assert "wrote 1 phantom patients" in capsys.readouterr().out
    assert (dst / "pt_1" / "dose.csv").is_file()
    with pytest.raises(OutputError, match=f"{dst} exists and is not empty.*--overwrite"):
        args.run(args)
    args = _cli(["phantoms", str(dst), "--n", "2", "--overwrite"])
    assert args.run(args) == 0 and (dst / "pt_2").is_dir()
