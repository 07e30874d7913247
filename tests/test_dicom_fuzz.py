"""Fuzzing the DICOM readers: truncated, corrupted and edited files give findings, never crashes."""

from __future__ import annotations

import random
import shutil
import struct
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from dicom_cases import export_small, load_dicom_cases
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from protocols.validation import CaseReport, DataValidationError, Policy, Severity

MUTANTS = 300
GARBAGE = ["", "abc", "-1", "0", "nan", "1e400", "1\\2\\3\\4\\5\\6\\7", "99999999", "1.5"]
SAMPLES = ["rtstruct.dcm", "rtdose.dcm", "rtplan.dcm", "CT_small.dcm"]
SYNTH = "synth"  # the patient of export_small
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every garbled value


def elements(ds: Dataset) -> list[tuple[Dataset, object]]:
    found = []
    for element in ds:
        found.append((ds, element))
        if element.VR == "SQ":
            for item in element.value:
                found += elements(item)
    return found


def mutate(path: Path, rng: random.Random) -> str:
    """Damage one file in place: truncate it, flip bytes, or delete / garble attributes (even nested ones)."""
    raw = path.read_bytes()
    mode = rng.choice(["truncate", "flip", "edit", "edit"])
    if mode == "truncate":
        path.write_bytes(raw[:rng.randrange(len(raw))])
    elif mode == "flip":
        data = bytearray(raw)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
    else:
        ds = pydicom.dcmread(path, force=True)
        for _ in range(rng.randint(1, 3)):
            parent, element = rng.choice(elements(ds))
            if element.VR == "SQ" or rng.random() < 0.5:
                del parent[element.tag]
            else:
                try:
                    parent[element.tag].value = rng.choice(GARBAGE)
                except (ValueError, TypeError, OverflowError):
                    del parent[element.tag]
        try:
            ds.save_as(path)
        except (ValueError, TypeError, OverflowError, AttributeError, OSError, struct.error):
            path.write_bytes(raw[: len(raw) // 2])
    return mode


def checked_reports(folder: Path, protocol) -> dict[str, CaseReport]:
    """Each patient's report under the ignore policy, after checking that no finding is an unanticipated defect
    and that every error names its file and its fix.
    """
    reports = {}
    for _, report in load_dicom_cases(folder, protocol, policy=Policy.IGNORE):
        for finding in report.findings:
            assert finding.code != "unexpected-defect", finding
            if finding.severity == Severity.ERROR:
                assert finding.path is not None and finding.fix, finding
        reports[report.patient_id] = report
    return reports


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    folder = export_small(tmp_path_factory.mktemp("fuzz") / "synth")
    for name in SAMPLES:
        shutil.copy(get_testdata_file(name), folder / f"sample-{name}")
    return folder


def test_hundreds_of_damaged_files_give_findings_not_exceptions(pristine, protocol, tmp_path):
    """The synthetic patient is clean; the pydicom samples are other patients, already unusable (no CT or no
    RT Structure Set). Damage to the synthetic patient's files must show in its report: always for a truncated
    file, for the other kinds of damage at least sometimes (a flipped pixel or a deleted optional attribute is
    harmless).
    """
    assert checked_reports(pristine, protocol)[SYNTH].status == "ok"
    rng = random.Random(20240601)
    files = sorted(pristine.iterdir())
    rt_files = [f for f in files if not f.name.startswith("CT.")]
    reported = Counter()
    for trial in range(MUTANTS):
        work = tmp_path / f"t{trial}"
        shutil.copytree(pristine, work)
        victim = work / rng.choice(rt_files if trial % 2 else files).name
        mode = mutate(victim, rng)
        try:
            flagged = checked_reports(work, protocol)[SYNTH].status != "ok"
            if not victim.name.startswith("sample-"):
                assert flagged or mode != "truncate", "the truncated file gave no error or warning"
                reported[mode] += flagged
        except AssertionError as exc:
            raise AssertionError(f"trial {trial} ({mode} {victim.name}): {exc}") from exc
        shutil.rmtree(work)
    assert all(reported[mode] > 0 for mode in ("truncate", "flip", "edit")), reported


def test_under_the_raise_policy_damage_raises_a_data_validation_error_with_its_fix(protocol, tmp_path):
    """The raise policy raises exactly when the ignore policy reports an error or a warning."""
    clean = export_small(tmp_path / "clean")
    rng = random.Random(7)
    raised = 0
    for trial in range(20):
        work = tmp_path / f"t{trial}"
        shutil.copytree(clean, work)
        mutate(work / "RTSTRUCT.dcm", rng)
        if checked_reports(work, protocol)[SYNTH].status == "ok":
            load_dicom_cases(work, protocol, policy=Policy.RAISE)
            continue
        with pytest.raises(DataValidationError, match="Fix:") as caught:
            load_dicom_cases(work, protocol, policy=Policy.RAISE)
        assert caught.value.report.patient_id == SYNTH
        raised += 1
    assert 0 < raised < 20, raised
