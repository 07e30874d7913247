"""Simulated MR: T1-weighted contrast by tissue (air and cortical bone both dark), Rician noise, a smooth multiplicative
bias field, scanners reproducible by seed; ``mr.csv`` through the OpenKBP reader, its validation and
``fedrt data simulate-mr``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedrt.cli import main
from protocols import simulated_mr_dataset
from protocols.dataset import ProtocolDataset
from protocols.errors import ConfigError, DataError, DataNotFoundError
from protocols.openkbp import load_openkbp_case, read_openkbp_case, write_openkbp_case
from protocols.phantom import generate_phantom, phantom_protocol, write_phantom_dataset
from protocols.protocol import protocol_to_dict
from protocols.simulated_mr import (
    AIR_MAX_HU,
    FAT_MAX_HU,
    LUNG_MAX_HU,
    MARROW_MAX_HU,
    SIMULATED_MR_LABEL,
    SOFT_TISSUE_MAX_HU,
    Scanner,
    Tissue,
    bias_field,
    classify_tissue,
    simulate_mr,
)
from protocols.simulated_mr_dataset import RECORD, write_simulated_mr_dataset
from protocols.validation import Policy

SHAPE = (32, 32, 32)
SLAB = 8  # voxels of each tissue along axis 0 in the slab phantom
SLAB_HU = {Tissue.AIR: -1000.0, Tissue.LUNG: -800.0, Tissue.FAT: -100.0, Tissue.SOFT_TISSUE: 40.0,
           Tissue.MARROW: 400.0, Tissue.CORTICAL_BONE: 1200.0}
SPACING = (2.0, 2.0, 2.0)
QUIET = Scanner(seed=1, blur_mm=0.0, bias_strength=0.0, noise_sd=0.0)  # the tissue signal alone


def slabs() -> np.ndarray:
    """A CT of one slab per tissue along axis 0, in the order of :class:`Tissue` (air first)."""
    ct = np.empty((SLAB * len(Tissue), 12, 12), dtype=np.float32)
    for tissue, hu in SLAB_HU.items():
        ct[tissue * SLAB:(tissue + 1) * SLAB] = hu
    return ct


def slab_means(mr: np.ndarray) -> dict[Tissue, float]:
    """Mean intensity of each slab's middle voxels (away from the blended boundaries)."""
    return {t: float(mr[t * SLAB + 3:t * SLAB + 5].mean()) for t in Tissue}


@pytest.fixture(scope="module")
def small(protocol):
    return phantom_protocol(protocol, SHAPE)


@pytest.fixture(scope="module")
def small_yaml(small, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("protocol") / "small.yaml"
    path.write_text(yaml.safe_dump(protocol_to_dict(small)))
    return path


@pytest.fixture(scope="module")
def phantom_case(protocol):
    return generate_phantom(protocol, seed=0, patient=1, shape=SHAPE)


@pytest.fixture
def phantoms(small, tmp_path) -> Path:
    src = tmp_path / "src"
    write_phantom_dataset(src, small, 2, seed=0)
    return src


def test_classes_follow_the_named_hu_thresholds_and_outside_the_body_is_air():
    hu = np.array([-1000, AIR_MAX_HU - 1, AIR_MAX_HU + 1, LUNG_MAX_HU + 1, FAT_MAX_HU + 1, SOFT_TISSUE_MAX_HU + 1,
                   MARROW_MAX_HU + 1, 3000], dtype=np.float32).reshape(1, 1, -1)
    expected = [Tissue.AIR, Tissue.AIR, Tissue.LUNG, Tissue.FAT, Tissue.SOFT_TISSUE, Tissue.MARROW,
                Tissue.CORTICAL_BONE, Tissue.CORTICAL_BONE]
    assert classify_tissue(hu).ravel().tolist() == expected
    body = np.ones(hu.shape, bool)
    body[..., -1] = False  # e.g. the couch: dense, but outside the patient
    assert classify_tissue(hu, body).ravel().tolist() == [*expected[:-1], Tissue.AIR]


@pytest.mark.parametrize("seed", range(5))
def test_every_site_sees_air_and_cortical_bone_dark_fat_and_marrow_bright(seed):
    means = slab_means(simulate_mr(slabs(), SPACING, Scanner.for_site(seed)))
    soft = means[Tissue.SOFT_TISSUE]
    assert means[Tissue.AIR] < 0.25 * soft
    assert means[Tissue.CORTICAL_BONE] < 0.25 * soft
    assert means[Tissue.LUNG] < 0.4 * soft
    assert means[Tissue.FAT] > 1.3 * soft
    assert means[Tissue.MARROW] > 4 * means[Tissue.CORTICAL_BONE]
    assert means[Tissue.MARROW] > soft


def test_air_and_cortical_bone_give_the_same_signal_none_the_ambiguity_of_synthetic_ct():
    mr = simulate_mr(slabs(), SPACING, QUIET)
    means = slab_means(mr)
    assert means[Tissue.AIR] == 0.0 and means[Tissue.CORTICAL_BONE] < 1e-6 * means[Tissue.FAT]
    ranked = sorted(Tissue, key=means.get, reverse=True)
    assert ranked[:4] == [Tissue.FAT, Tissue.MARROW, Tissue.SOFT_TISSUE, Tissue.LUNG]


def test_each_scanner_is_reproducible_by_its_seed_and_sites_differ():
    ct = slabs()
    assert Scanner.for_site(3) == Scanner.for_site(3)
    first = simulate_mr(ct, SPACING, Scanner.for_site(3))
    assert first.dtype == np.float32 and first.shape == ct.shape
    np.testing.assert_array_equal(first, simulate_mr(ct, SPACING, Scanner.for_site(3)))
    rebuilt = Scanner(**Scanner.for_site(3).to_dict())
    np.testing.assert_array_equal(first, simulate_mr(ct, SPACING, rebuilt))
    assert not np.allclose(first, simulate_mr(ct, SPACING, Scanner.for_site(4)))
    sites = [Scanner.for_site(s) for s in range(4)]
    assert len({(s.tr_ms, s.te_ms, s.contrast, s.noise_sd, s.bias_strength, s.scale) for s in sites}) == 4
    contrast = [slab_means(simulate_mr(ct, SPACING, dataclasses.replace(s, noise_sd=0.0, bias_strength=0.0)))
                for s in sites]
    fat_to_soft = [m[Tissue.FAT] / m[Tissue.SOFT_TISSUE] for m in contrast]
    assert max(fat_to_soft) - min(fat_to_soft) > 0.05, "sites should differ in contrast, not only in scale"


def test_each_patient_gets_its_own_noise_from_the_same_scanner():
    ct = slabs()
    other = ct.copy()
    other[-1, -1, -1] += 1.0
    scanner = Scanner.for_site(2)
    air = slice(0, SLAB - 2)
    assert not np.allclose(simulate_mr(ct, SPACING, scanner)[air], simulate_mr(other, SPACING, scanner)[air])


def test_noise_is_rician_non_negative_with_a_floor_where_there_is_no_signal():
    sigma, scale = 0.05, 1000.0
    scanner = Scanner(seed=7, blur_mm=0.0, bias_strength=0.0, noise_sd=sigma, scale=scale)
    air = simulate_mr(np.full(SHAPE, -1000.0, np.float32), SPACING, scanner)
    assert air.min() >= 0.0
    # no signal: the magnitude of complex Gaussian noise is Rayleigh distributed, mean sigma * sqrt(pi / 2)
    assert air.mean() == pytest.approx(scale * sigma * np.sqrt(np.pi / 2), rel=0.03)
    assert air.std() == pytest.approx(scale * sigma * np.sqrt(2 - np.pi / 2), rel=0.05)
    fat = simulate_mr(np.full(SHAPE, -100.0, np.float32), SPACING, scanner)
    signal = simulate_mr(np.full(SHAPE, -100.0, np.float32), SPACING, dataclasses.replace(scanner, noise_sd=0.0))
    # high signal: nearly Gaussian around the signal, with the noise's spread
    assert (fat - signal).std() == pytest.approx(scale * sigma, rel=0.05)
    assert abs(float((fat - signal).mean())) < 0.1 * scale * sigma
    assert simulate_mr(np.full(SHAPE, -1000.0, np.float32), SPACING, dataclasses.replace(scanner, noise_sd=0.0)).max() \
        == 0.0


def test_bias_field_is_a_smooth_gain_across_tissue_boundaries():
    ct = np.full(SHAPE, 40.0, np.float32)
    ct[:, :, ::4] = -100.0  # fat sheets every 4 voxels: an additive field would jump at each boundary
    strength = 0.2
    biased = Scanner(seed=5, blur_mm=0.0, bias_strength=strength, noise_sd=0.0)
    gain = simulate_mr(ct, SPACING, biased) / simulate_mr(ct, SPACING, dataclasses.replace(biased, bias_strength=0.0))
    assert gain.min() >= np.exp(-strength) - 1e-5 and gain.max() <= np.exp(strength) + 1e-5
    assert gain.max() / gain.min() > 1.15, "the field should vary"
    for axis in range(3):
        assert np.abs(np.diff(gain, axis=axis)).max() < 0.05, "no jumps between neighbours, at tissue edges or not"
    image = simulate_mr(ct, SPACING, biased)
    assert np.abs(np.diff(image, axis=2)).max() / image.mean() > 0.5, "while the tissue contrast does jump"


def test_bias_field_is_positive_bounded_and_seeded():
    field = bias_field(SHAPE, 0.3, np.random.default_rng(1))
    assert field.dtype == np.float32 and field.shape == SHAPE
    assert np.isclose(max(np.log(field.max()), -np.log(field.min())), 0.3, rtol=1e-4)
    np.testing.assert_array_equal(field, bias_field(SHAPE, 0.3, np.random.default_rng(1)))
    assert not np.allclose(field, bias_field(SHAPE, 0.3, np.random.default_rng(2)))
    assert np.all(bias_field(SHAPE, 0.0, np.random.default_rng(1)) == 1.0)


def test_the_global_scale_multiplies_the_whole_image():
    scanner = Scanner.for_site(1)
    base = simulate_mr(slabs(), SPACING, scanner)
    np.testing.assert_allclose(simulate_mr(slabs(), SPACING, dataclasses.replace(scanner, scale=3 * scanner.scale)),
                               3 * base, rtol=1e-5)


def test_bad_settings_and_inputs_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"noise_sd >= 0.*Scanner.for_site"):
        Scanner(noise_sd=-0.1)
    with pytest.raises(ConfigError, match="6 positive contrast factors"):
        Scanner(contrast=(1.0, 1.0))
    with pytest.raises(ConfigError, match="seed"):
        Scanner.for_site(-1)
    with pytest.raises(DataError, match="3-D CT"):
        simulate_mr(np.zeros((4, 4)), SPACING, Scanner())
    with pytest.raises(DataError, match="body mask"):
        simulate_mr(slabs(), SPACING, Scanner(), body=np.ones((2, 2, 2), bool))


@pytest.mark.parametrize("compress", [False, True])
def test_mr_round_trips_through_the_openkbp_writer_reader_and_cache(phantom_case, small, tmp_path, compress):
    mr = simulate_mr(phantom_case.ct_hu, phantom_case.spacing_mm, Scanner.for_site(0), phantom_case.possible_dose_mask)
    case = dataclasses.replace(phantom_case, mr=mr)
    folder = write_openkbp_case(case, tmp_path / "pt_1", compress=compress)
    assert (folder / ("mr.csv.gz" if compress else "mr.csv")).is_file()
    read, report = read_openkbp_case(folder, small)
    assert report.usable and read.mr.dtype == np.float32
    np.testing.assert_allclose(read.mr, mr, rtol=1e-3)
    for _ in range(2):  # parsed, then from the cache
        cached, _ = load_openkbp_case(folder, small, Policy.RAISE, cache_dir=tmp_path / "cache")
        np.testing.assert_allclose(cached.mr, mr, rtol=1e-3)


def test_a_patient_without_mr_has_none(phantom_case, small, tmp_path):
    folder = write_openkbp_case(phantom_case, tmp_path / "pt_1")
    assert not list(folder.glob("mr.csv*"))
    case, report = read_openkbp_case(folder, small)
    assert report.usable and case.mr is None


@pytest.mark.parametrize(("damage", "code"), [
    (lambda text: text[: len(text) // 2].rstrip("\n"), "truncated"),
    (lambda text: text + f"{10**9},5.0\n", "wrong-shape"),
    (lambda text: text + "3,nan\n", "nan"),
])
def test_a_damaged_mr_is_reported_like_a_damaged_ct(phantom_case, small, small_yaml, tmp_path, capsys, damage, code):
    case = dataclasses.replace(phantom_case, mr=simulate_mr(phantom_case.ct_hu, phantom_case.spacing_mm, Scanner()))
    folder = write_openkbp_case(case, tmp_path / "data" / "pt_1")
    mr_file = folder / "mr.csv"
    mr_file.write_text(damage(mr_file.read_text()))
    read, report = read_openkbp_case(folder, small)
    assert read is None
    assert [(f.code, f.path) for f in report.errors] == [(code, mr_file)]
    assert main(["data", "check", str(tmp_path / "data"), "--protocol", str(small_yaml)]) == 1
    out = capsys.readouterr().out
    assert f"error: {code}: mr:" in out and "mr.csv" in out


def test_simulate_mr_command_adds_mr_to_every_patient(phantoms, small, small_yaml, tmp_path, capsys):
    dst = tmp_path / "with-mr"
    assert main(["data", "simulate-mr", str(phantoms), str(dst), "--seed", "3", "--protocol", str(small_yaml)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["pt_1", "pt_2"]
    assert all(SIMULATED_MR_LABEL in line for line in lines)
    assert lines[-1].startswith("2 patients with simulated MR (scanner seed 3")
    for patient in ("pt_1", "pt_2"):
        source, copy = phantoms / patient, dst / patient
        assert (copy / "mr.csv").is_file() and not (source / "mr.csv").exists()
        for path in source.iterdir():
            assert (copy / path.name).read_bytes() == path.read_bytes()
            assert os.stat(copy / path.name).st_ino == os.stat(path).st_ino, "hard-linked on the same file system"
    record = json.loads((dst / RECORD).read_text())
    assert record["label"] == SIMULATED_MR_LABEL and record["scanner"]["seed"] == 3
    cases = list(ProtocolDataset(dst, small, Policy.RAISE, cache_dir=tmp_path / "cache").cases())
    scanner = Scanner.for_site(3)
    for case in cases:
        expected = simulate_mr(case.ct_hu, case.spacing_mm, scanner, case.possible_dose_mask)
        np.testing.assert_allclose(case.mr, expected, rtol=1e-3)
        body = case.possible_dose_mask
        assert case.mr[body].mean() > 3 * case.mr[~body].mean(), "the patient stands out of the noise"


def test_simulate_mr_command_same_seed_same_files_other_seed_differs(phantoms, small_yaml, tmp_path, capsys):
    runs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert main(["data", "simulate-mr", str(phantoms), str(tmp_path / name), "--seed", seed,
                     "--protocol", str(small_yaml)]) == 0
        runs[name] = (tmp_path / name / "pt_1" / "mr.csv").read_bytes()
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]


@pytest.mark.parametrize("make_src", [lambda p: p, lambda p: p / "missing", lambda p: p / "file.txt"])
def test_simulate_mr_command_refuses_a_source_that_is_not_a_dataset(tmp_path, small_yaml, capsys, make_src):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "file.txt").write_text("not a dataset")
    src = make_src(tmp_path / "empty")
    assert main(["data", "simulate-mr", str(src), str(tmp_path / "dst"), "--protocol", str(small_yaml)]) == 2
    err = capsys.readouterr().err
    assert str(src) in err and "OpenKBP-layout dataset" in err and err.count("\n") == 1
    assert not (tmp_path / "dst").exists()


def test_simulate_mr_leaves_nothing_when_a_patient_cannot_be_read(phantoms, small, tmp_path):
    (phantoms / "pt_2" / "ct.csv").write_text(",data\n12,nan\n")
    dst = tmp_path / "dst"
    with pytest.raises(DataError, match=r"(?s)pt_2.*nan"):
        write_simulated_mr_dataset(phantoms, dst, small, Scanner.for_site(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_simulate_mr_copies_where_links_are_refused_and_refuses_a_non_empty_destination(phantoms, small, tmp_path,
                                                                                        monkeypatch):
    def no_links(src, dst):
        raise OSError("cross-device link")

    monkeypatch.setattr(simulated_mr_dataset.os, "link", no_links)
    dst = tmp_path / "dst"
    written = write_simulated_mr_dataset(phantoms / "pt_1", dst, small, Scanner.for_site(0))
    assert [p.mr_file for p in written] == [dst / "pt_1" / "mr.csv"]
    ct = dst / "pt_1" / "ct.csv"
    assert ct.read_bytes() == (phantoms / "pt_1" / "ct.csv").read_bytes()
    assert os.stat(ct).st_ino != os.stat(phantoms / "pt_1" / "ct.csv").st_ino
    with pytest.raises(OSError, match="not empty; choose another DST"):
        write_simulated_mr_dataset(phantoms, dst, small, Scanner.for_site(0))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        write_simulated_mr_dataset(tmp_path / "nowhere", tmp_path / "dst2", small, Scanner.for_site(0))


def test_each_patient_can_be_scanned_by_its_own_hospitals_scanner(phantoms, small, tmp_path):
    """Hospitals pooled in one dataset: each patient's MR comes from its own site's scanner, recorded per patient."""
    sites = {"pt_1": 1, "pt_2": 2}
    dst = tmp_path / "pooled"
    write_simulated_mr_dataset(phantoms, dst, small, lambda patient: Scanner.for_site(sites[patient]))
    record = json.loads((dst / RECORD).read_text())
    assert {patient: scanner["seed"] for patient, scanner in record["scanners"].items()} == sites
    for patient, seed in sites.items():
        case, _ = read_openkbp_case(dst / patient, small)
        expected = simulate_mr(case.ct_hu, case.spacing_mm, Scanner.for_site(seed), case.possible_dose_mask)
        np.testing.assert_allclose(case.mr, expected, rtol=1e-3)
