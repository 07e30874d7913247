"""The OpenKBP reader on real shared patients: shapes, units, geometry, caching and validation findings."""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from fedrt.cli import main
from protocols.case import AXES
from protocols.dataset import ProtocolDataset, find_patient_dirs
from protocols.openkbp import load_openkbp_case, read_openkbp_case
from protocols.protocol import protocol_from_dict, protocol_to_dict
from protocols.splits import DataConfig, load_cases, select_folders
from protocols.validation import DataValidationError, Policy


def test_real_patient_has_expected_shapes_units_and_geometry(openkbp_root, protocol):
    case, report = load_openkbp_case(openkbp_root / "train-pats" / "pt_1", protocol, Policy.RAISE)
    assert report.usable
    assert case.shape == (128, 128, 128)
    assert case.spacing_mm == pytest.approx((3.906, 3.906, 2.5))
    assert case.ct_hu.dtype == np.float32 and case.ct_hu.min() == -1000.0
    body = case.ct_hu[case.possible_dose_mask]
    assert -200 < np.median(body) < 200, "soft tissue should sit near 0 HU"
    assert 60 < case.dose_gy.max() < 85, "plans are 70 Gy SIB in 35 fractions"
    assert case.dose_gy[case.structures["PTV70"]].mean() > 65
    # Axes: cord is posterior to the mandible (axis 0), left parotid at larger axis 1, brainstem superior (axis 2).
    centre = {n: np.argwhere(m).mean(0) for n, m in case.structures.items()}
    assert AXES[0].startswith("anterior") and centre["SpinalCord"][0] > centre["Mandible"][0]
    assert centre["LeftParotid"][1] > centre["RightParotid"][1]
    assert centre["Brainstem"][2] < centre["SpinalCord"][2]


def test_uncontoured_structures_are_notes_not_errors(openkbp_root, protocol):
    _, report = load_openkbp_case(openkbp_root / "train-pats" / "pt_1", protocol, Policy.RAISE)
    codes = {(f.severity, f.code) for f in report.findings}
    assert codes == {("note", "missing-roi")}


def _copy_patient(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for path in dst.iterdir():
        path.chmod(0o644)
    return dst


def test_cache_is_used_then_invalidated_when_a_source_changes(openkbp_root, protocol, tmp_path):
    patient = _copy_patient(openkbp_root / "train-pats" / "pt_1", tmp_path / "pt_1")
    cache = tmp_path / "cache"
    first, _ = load_openkbp_case(patient, protocol, cache_dir=cache)
    assert len(list(cache.rglob("*.npz"))) == 1
    again, _ = load_openkbp_case(patient, protocol, cache_dir=cache)
    np.testing.assert_array_equal(first.ct_hu, again.ct_hu)
    np.testing.assert_array_equal(first.dose_gy, again.dose_gy)
    assert first.structures.keys() == again.structures.keys()
    for name in first.structures:
        np.testing.assert_array_equal(first.structures[name], again.structures[name])

    time.sleep(0.01)
    with gzip.open(patient / "dose.csv.gz", "wt") as handle:
        handle.write(",data\n0,5.0\n")
    changed, _ = load_openkbp_case(patient, protocol, cache_dir=cache)
    assert changed.dose_gy.sum() == pytest.approx(5.0)
    assert len(list(cache.rglob("*.npz"))) == 1, "the stale cache entry is removed"


def test_a_changed_protocol_of_the_same_name_is_parsed_again(openkbp_root, protocol, tmp_path):
    patient = openkbp_root / "train-pats" / "pt_1"
    cache = tmp_path / "cache"
    full, _ = load_openkbp_case(patient, protocol, cache_dir=cache)
    assert "Brainstem" in full.structures
    data = protocol_to_dict(protocol)
    data["structures"] = [s for s in data["structures"] if s["name"] != "Brainstem"]
    data["goals"] = [g for g in data["goals"] if g["structure"] != "Brainstem"]
    fewer = protocol_from_dict(data)
    assert fewer.name == protocol.name
    changed, _ = load_openkbp_case(patient, fewer, cache_dir=cache)
    assert set(changed.structures) == set(full.structures) - {"Brainstem"}


def test_plain_csv_is_read_like_gzip(openkbp_root, protocol, tmp_path):
    patient = _copy_patient(openkbp_root / "train-pats" / "pt_1", tmp_path / "pt_1")
    for path in patient.glob("*.csv.gz"):
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    plain, _ = read_openkbp_case(patient, protocol)
    gz, _ = read_openkbp_case(openkbp_root / "train-pats" / "pt_1", protocol)
    np.testing.assert_array_equal(plain.ct_hu, gz.ct_hu)
    np.testing.assert_array_equal(plain.dose_gy, gz.dose_gy)


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        (lambda p: (p / "ct.csv.gz").unlink(), "missing-file"),
        (lambda p: (p / "dose.csv.gz").write_bytes(gzip.compress(b",data\n0,nan\n5,1.0\n")), "nan"),
        (lambda p: (p / "ct.csv.gz").write_bytes(gzip.compress(b",data\n2097152,10\n")), "wrong-shape"),
        (lambda p: (p / "Brainstem.csv.gz").write_bytes(gzip.compress(b",data\n")), "empty-mask"),
        (lambda p: (p / "voxel_dimensions.csv.gz").write_bytes(gzip.compress(b"3.9\n3.9\n")), "wrong-shape"),
        (lambda p: (p / "possible_dose_mask.csv.gz").write_bytes(b"not gzip"), "unreadable"),
        (lambda p: _cut((p / "ct.csv.gz"), 0.5), "truncated"),
    ],
)
def test_damaged_patient_is_reported_with_file_and_fix(openkbp_root, protocol, tmp_path, damage, code):
    patient = _copy_patient(openkbp_root / "train-pats" / "pt_1", tmp_path / "pt_1")
    damage(patient)
    _, report = read_openkbp_case(patient, protocol)
    found = [f for f in report.findings if f.code == code]
    assert found, report.findings
    assert found[0].path is not None and found[0].fix
    if found[0].severity == "error":
        with pytest.raises(DataValidationError, match=code):
            load_openkbp_case(patient, protocol, Policy.RAISE, cache_dir=tmp_path / "cache")


def _cut(path: Path, fraction: float) -> None:
    """Keep the first ``fraction`` of the file's bytes (a copy interrupted part-way)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _plain_ct_cut_mid_row(patient: Path, keep: int) -> Path:
    """Replace the patient's ct.csv.gz by a plain ct.csv whose last row has lost its last ``keep`` bytes."""
    text = gzip.decompress((patient / "ct.csv.gz").read_bytes())
    (patient / "ct.csv.gz").unlink()
    (patient / "ct.csv").write_bytes(text[:-keep])
    return patient / "ct.csv"


@pytest.mark.parametrize("cut", [1, 3, 7], ids=["value-end", "mid-value", "mid-index"])
def test_plain_csv_cut_mid_row_is_reported_as_truncated_naming_the_file(openkbp_root, protocol, tmp_path, cut):
    patient = _copy_patient(openkbp_root / "train-pats" / "pt_1", tmp_path / "pt_1")
    ct = _plain_ct_cut_mid_row(patient, cut)
    case, report = read_openkbp_case(patient, protocol)
    assert case is None
    assert [(f.code, f.path) for f in report.errors] == [("truncated", ct)]
    assert "ct.csv is truncated" in report.errors[0].message


def test_a_folder_without_ct_is_reported_unusable_and_skipped_in_training(openkbp_root, protocol, tmp_path, capsys):
    root = tmp_path / "site"
    for patient in ("pt_1", "pt_2"):
        _copy_patient(openkbp_root / "train-pats" / patient, root / "train-pats" / patient)
    _copy_patient(openkbp_root / "validation-pats" / "pt_201", root / "validation-pats" / "pt_201")
    no_ct = root / "train-pats" / "pt_1b"
    no_ct.mkdir()
    for name in ("dose.csv.gz", "voxel_dimensions.csv.gz", "PTV70.csv.gz"):
        shutil.copy(root / "train-pats" / "pt_1" / name, no_ct / name)

    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"pt_1b        error    {no_ct}" in out
    assert "missing-file: ct.csv(.gz) not found" in out and "Fix: export ct.csv" in out
    assert "4 patients: 3 ok, 0 with warnings, 1 unusable" in out

    train, _ = select_folders(root, DataConfig(root=str(root)))
    assert [p.name for p in train] == ["pt_1", "pt_1b", "pt_2"]
    for policy in (Policy.WARN, Policy.IGNORE):
        assert [c.patient_id for c in load_cases(train, protocol, policy)] == ["pt_1", "pt_2"]
    with pytest.raises(DataValidationError, match="pt_1b"):
        load_cases(train, protocol, Policy.RAISE)


def test_dataset_finds_patients_in_split_folders_in_natural_order(openkbp_root, protocol):
    dirs = find_patient_dirs(openkbp_root)
    assert len(dirs) == 50
    train = ProtocolDataset(openkbp_root / "train-pats", protocol)
    assert [p.name for p in train.patient_dirs[:3]] == ["pt_1", "pt_2", "pt_3"]


def test_data_check_command_reports_each_patient(openkbp_root, tmp_path, capsys):
    _copy_patient(openkbp_root / "train-pats" / "pt_1", tmp_path / "pt_1")
    broken = _copy_patient(openkbp_root / "train-pats" / "pt_2", tmp_path / "pt_2")
    (broken / "possible_dose_mask.csv.gz").unlink()
    assert main(["data", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "pt_1" in out and "pt_2" in out and "missing-file" in out
    assert "2 patients: 1 ok, 0 with warnings, 1 unusable" in out
