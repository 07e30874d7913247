"""Interoperability with plastimatch: DICOM it writes imports as well as ours, and it rasterises our
RT Structure Sets into the masks they were written from.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dicom_cases import MET_TYPES, dice, write_mha
from external import PLASTIMATCH, require_tool

from protocols.dicom.export import centred_grid, export_case
from protocols.dicom.importer import import_dicom
from protocols.openkbp import read_openkbp_case

PATIENT = "train-pats/pt_1"


@pytest.fixture(scope="module")
def plastimatch() -> Callable[..., None]:
    """Runs plastimatch with the given arguments and checks that it succeeded."""
    tool = require_tool("plastimatch", PLASTIMATCH)

    def run(*args: str) -> None:
        done = subprocess.run([tool, *args], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    return run


def read_mha(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    """An uncompressed MetaImage with identity directions, as an array in case axis order."""
    header, _, data = path.read_bytes().partition(b"ElementDataFile = LOCAL\n")
    fields = dict(line.split(" = ", 1) for line in header.decode().splitlines() if " = " in line)
    assert fields["TransformMatrix"].split() == ["1", "0", "0", "0", "1", "0", "0", "0", "1"]
    nx, ny, nz = (int(v) for v in fields["DimSize"].split())
    array = np.frombuffer(data, dtype=MET_TYPES[fields["ElementType"]]).reshape(nz, ny, nx)
    return array.transpose(1, 2, 0)[:, :, ::-1], fields


@pytest.fixture(scope="module")
def patient(openkbp_root, protocol):
    case, _ = read_openkbp_case(openkbp_root / PATIENT, protocol)
    return case


def test_dicom_written_by_plastimatch_imports_like_ours(plastimatch, patient, protocol, tmp_path):
    grid = centred_grid(patient.shape, patient.spacing_mm)
    (tmp_path / "masks").mkdir()
    write_mha(tmp_path / "ct.mha", patient.ct_hu, grid, "MET_SHORT")
    write_mha(tmp_path / "dose.mha", patient.dose_gy, grid, "MET_FLOAT")
    for name, mask in patient.structures.items():
        write_mha(tmp_path / "masks" / f"{name}.mha", mask, grid, "MET_UCHAR")
    plastimatch("convert", "--input", str(tmp_path / "ct.mha"), "--input-prefix", str(tmp_path / "masks"),
                "--input-dose-img", str(tmp_path / "dose.mha"), "--output-dicom", str(tmp_path / "dicom"),
                "--patient-id", "from-plastimatch")
    (report,) = import_dicom(tmp_path / "dicom", tmp_path / "dataset", protocol)
    assert report.usable, report.findings
    imported, _ = read_openkbp_case(tmp_path / "dataset" / "from-plastimatch", protocol)
    assert np.abs(imported.ct_hu - patient.ct_hu).max() <= 1.0
    assert np.abs(imported.dose_gy - patient.dose_gy).max() <= 0.1
    for name, mask in patient.structures.items():
        assert dice(imported.structures[name], mask) >= 0.95, name


def test_plastimatch_rasterises_our_structure_set_into_the_same_masks(plastimatch, patient, protocol,
                                                                       tmp_path):
    export_case(patient, tmp_path / "dicom", protocol=protocol)
    plastimatch("convert", "--input", str(tmp_path / "dicom"), "--output-prefix", str(tmp_path / "masks"))
    for name, mask in patient.structures.items():
        theirs, fields = read_mha(tmp_path / "masks" / f"{name}.mha")
        assert theirs.shape == mask.shape
        assert dice(theirs > 0, mask) >= 0.95, name
    grid = centred_grid(patient.shape, patient.spacing_mm)
    offset = [float(v) for v in fields["Offset"].split()]
    np.testing.assert_allclose(offset[:2], grid.origin_mm[:2], atol=0.01)
