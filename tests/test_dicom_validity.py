"""Every exported DICOM object passes dciodvfy (dicom3tools) without errors."""

from __future__ import annotations

from dicom_cases import dciodvfy_errors, export_small

from protocols.dicom.export import export_case
from protocols.openkbp import read_openkbp_case


def test_every_object_exported_from_a_shared_patient_passes_dciodvfy(openkbp_root, protocol, tmp_path):
    case, _ = read_openkbp_case(openkbp_root / "train-pats" / "pt_1", protocol)
    exported = export_case(case, tmp_path / "dicom", protocol=protocol)
    objects = [*exported.ct_files, exported.rtstruct, exported.rtdose]
    assert len(objects) == 130
    errors = {path.name: found for path in objects if (found := dciodvfy_errors(path))}
    assert errors == {}


def test_objects_of_a_small_case_pass_dciodvfy(tmp_path):
    folder = export_small(tmp_path / "dicom")
    for path in sorted(folder.iterdir()):
        assert dciodvfy_errors(path) == [], path.name
