"""Round trips on shared OpenKBP patients (export to DICOM, import back) and the import-dicom contract."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_cases import ct_files, dice, export_small, load_dicom_cases

from fedrt.cli import build_parser
from protocols.dicom.export import export_case, write_ct_series, write_rtdose
from protocols.dicom.geometry import VolumeGrid
from protocols.dicom.header import StudyContext
from protocols.dicom.importer import SIDECAR, UNASSIGNED, import_dicom, read_sidecar_grid
from protocols.errors import OutputError
from protocols.openkbp import read_openkbp_case
from protocols.validation import Policy

ON_PROTOCOL_GRID = ["train-pats/pt_1", "validation-pats/pt_202"]
OTHER_GRID = "validation-pats/pt_203"  # 3.906 x 3.906 x 3.0 mm: resampled along the slices on import


def long_decimal_strings(path: Path) -> list[str]:
    """The DS values of a written file that do not fit a DICOM decimal string (16 characters), as written."""
    too_long = []
    for element in pydicom.dcmread(path, stop_before_pixels=True).iterall():
        if element.VR == "DS" and element.value not in (None, ""):
            values = element.value if element.VM > 1 else [element.value]
            too_long += [f"{element.tag} {v}" for v in values if len(str(v)) > 16]
    return too_long


def test_positions_that_need_more_than_16_characters_are_written_as_valid_decimal_strings(tmp_path):
    origin = (0.1 + 0.2, -240.51140299999997, 1 / 3)
    grid = VolumeGrid((4, 5, 3), (0.7, 0.9, 1.1), origin)
    context = StudyContext("ds-length")
    _, paths = write_ct_series(np.zeros(grid.shape, np.float32), grid, tmp_path, context)
    dose = write_rtdose(np.full(grid.shape, 0.3), grid, tmp_path / "RTDOSE.dcm", context, "1.2.3")
    assert [long_decimal_strings(path) for path in [*paths, dose]] == [[]] * (len(paths) + 1)
    position = [float(v) for v in pydicom.dcmread(paths[1]).ImagePositionPatient]
    assert position == pytest.approx(grid.to_mm((0, 0, 1)), abs=1e-9)


def assert_same_case(imported, original):
    assert np.abs(imported.ct_hu - original.ct_hu).max() <= 1.0
    assert np.abs(imported.dose_gy - original.dose_gy).max() <= 0.1
    assert set(imported.structures) == set(original.structures)
    for name, mask in original.structures.items():
        assert dice(imported.structures[name], mask) >= 0.95, name


@pytest.mark.parametrize("patient", ON_PROTOCOL_GRID)
def test_export_then_import_gives_back_the_openkbp_patient(openkbp_root, protocol, tmp_path, patient):
    original, _ = read_openkbp_case(openkbp_root / patient, protocol)
    export_case(original, tmp_path / "dicom" / "nested" / "study", protocol=protocol)
    reports = import_dicom(tmp_path / "dicom", tmp_path / "dataset", protocol, fmt="openkbp")
    assert [r.status for r in reports] == ["ok"]
    imported, report = read_openkbp_case(tmp_path / "dataset" / original.patient_id, protocol)
    assert report.usable
    assert imported.spacing_mm == pytest.approx(original.spacing_mm)
    assert_same_case(imported, original)


def test_a_patient_on_another_grid_reads_exactly_and_imports_onto_the_protocol_grid(openkbp_root, protocol,
                                                                                    tmp_path):
    original, _ = read_openkbp_case(openkbp_root / OTHER_GRID, protocol)
    export_case(original, tmp_path / "dicom", protocol=protocol)
    ((native, _),) = load_dicom_cases(tmp_path / "dicom", protocol)
    assert native.case.spacing_mm == pytest.approx(original.spacing_mm)
    assert_same_case(native.case, original)
    import_dicom(tmp_path / "dicom", tmp_path / "dataset", protocol)
    resampled, report = read_openkbp_case(tmp_path / "dataset" / original.patient_id, protocol)
    assert report.usable and resampled.spacing_mm == pytest.approx(protocol.grid.spacing_mm)
    voxel_ratio = np.prod(resampled.spacing_mm) / np.prod(original.spacing_mm)
    for name in protocol.targets:
        if name in original.structures:
            mask, before = resampled.structures[name], original.structures[name]
            assert mask.sum() * voxel_ratio == pytest.approx(before.sum(), rel=0.05)
            assert resampled.dose_gy[mask].mean() == pytest.approx(original.dose_gy[before].mean(), abs=0.5)


def nested_export(root: Path, patient_id: str) -> Path:
    """A patient exported under a nested folder with meaningless file names (as PACS exports look)."""
    folder = export_small(root / patient_id / "a" / "b", patient_id)
    for n, path in enumerate(sorted(folder.iterdir())):
        path.rename(folder / f"IM{n:05d}")
    return folder


def test_import_writes_good_patients_and_reports_bad_ones_without_stopping(protocol, tmp_path):
    src = tmp_path / "export"
    nested_export(src, "good1")
    nested_export(src, "good/2")
    broken = nested_export(src, "broken")
    sorted(broken.iterdir())[3].unlink()  # a CT slice
    (src / "README.txt").write_text("not DICOM")
    reports = {r.patient_id: r for r in import_dicom(src, tmp_path / "dataset", protocol)}
    assert reports["good1"].status == "ok" and reports["good_2"].status == "ok"
    assert "missing-slice" in {f.code for f in reports["broken"].errors}
    assert reports["broken"].errors[0].fix
    assert any(f.code == "not-dicom" for f in reports[UNASSIGNED].findings)
    assert sorted(p.name for p in (tmp_path / "dataset").iterdir()) == ["good1", "good_2"]
    case, _ = read_openkbp_case(tmp_path / "dataset" / "good1", protocol)
    assert case.shape == protocol.grid.shape


def test_formats_fedrt_writes_gzip_and_an_import_record_openkbp_plain_csv(protocol, tmp_path):
    export_small(tmp_path / "dicom")
    import_dicom(tmp_path / "dicom", tmp_path / "fedrt", protocol, fmt="fedrt")
    import_dicom(tmp_path / "dicom", tmp_path / "openkbp", protocol, fmt="openkbp")
    fedrt_files = {p.name for p in (tmp_path / "fedrt" / "synth").iterdir()}
    openkbp_files = {p.name for p in (tmp_path / "openkbp" / "synth").iterdir()}
    assert openkbp_files == {"ct.csv", "dose.csv", "possible_dose_mask.csv", "PTV70.csv", "SpinalCord.csv",
                             "voxel_dimensions.csv"}
    assert fedrt_files == {f"{name}.gz" for name in openkbp_files} | {SIDECAR}
    record = json.loads((tmp_path / "fedrt" / "synth" / SIDECAR).read_text())
    assert record["names"]["matched"]["PTV70"]["roi"] == "PTV70" and record["grid"]["shape"] == [128, 128, 128]


def test_reimport_replaces_the_patient_folder_and_leaves_no_temporary_files(protocol, tmp_path):
    export_small(tmp_path / "dicom")
    for _ in range(2):
        import_dicom(tmp_path / "dicom", tmp_path / "dataset", protocol)
    assert [p.name for p in (tmp_path / "dataset").iterdir()] == ["synth"]


def test_raise_policy_rejects_a_patient_with_warnings_but_imports_the_rest(protocol, tmp_path):
    export_small(tmp_path / "dicom" / "a", "clean")
    warned = export_small(tmp_path / "dicom" / "b", "warned")
    path = ct_files(warned)[3]
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient[2] += 1.0  # uneven spacing: a warning
    ds.save_as(path)
    reports = {r.patient_id: r for r in import_dicom(tmp_path / "dicom", tmp_path / "out", protocol,
                                                     policy=Policy.RAISE)}
    assert reports["clean"].usable and not reports["warned"].usable
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["clean"]


def test_export_of_an_imported_patient_puts_the_ct_back_where_it_was(protocol, tmp_path):
    export_small(tmp_path / "dicom")
    import_dicom(tmp_path / "dicom", tmp_path / "dataset", protocol)
    args = build_parser().parse_args(["export-dicom", str(tmp_path / "dataset" / "synth"), str(tmp_path / "again")])
    assert args.run(args) == 0
    ((before, _),) = load_dicom_cases(tmp_path / "dicom", protocol)
    ((after, _),) = load_dicom_cases(tmp_path / "again", protocol)
    assert after.grid.same_as(read_sidecar_grid(tmp_path / "dataset" / "synth"))

    def body_centre_mm(dicom_case):
        return dicom_case.grid.to_mm(np.argwhere(dicom_case.case.ct_hu > -500).mean(axis=0))

    np.testing.assert_allclose(body_centre_mm(after), body_centre_mm(before), atol=1.0)
    with pytest.raises(OutputError, match=f"{tmp_path / 'again'} exists and is not empty; choose another OUT"):
        args.run(args)


def test_cli_import_dicom_prints_the_report_and_exits_by_usability(protocol, tmp_path, capsys):
    export_small(tmp_path / "dicom")
    args = build_parser().parse_args(["data", "import-dicom", str(tmp_path / "dicom"), str(tmp_path / "out"),
                                      "--protocol", "hn-openkbp", "--format", "openkbp"])
    assert args.run(args) == 0
    assert "1 patients: 1 ok" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "out")
    ct_files(tmp_path / "dicom")[2].unlink()
    assert args.run(args) == 1
    assert "missing-slice" in capsys.readouterr().out
