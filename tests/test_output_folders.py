"""Every command that writes a folder refuses a non-empty one with an OutputError naming it and the fix,
before any work is done.
"""

from __future__ import annotations

import re

import pytest

from fedrt.cli import build_parser
from models.checkpoint import Checkpoint
from models.config import ModelConfig
from models.tasks import make_task
from protocols.errors import OutputError
from runtime.segmentation import segment


@pytest.fixture
def occupied(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    return folder


def refused(folder, option: str):
    return pytest.raises(OutputError, match=re.escape(f"{folder} exists and is not empty; choose another {option}"))


def test_segment_refuses_a_non_empty_folder_before_reading_the_ct(occupied, protocol, tmp_path):
    task = make_task("seg", protocol, ModelConfig(channels=(4, 8), strides=(2,), res_units=0))
    with refused(occupied, "--out"):
        segment(tmp_path / "no-such-ct", Checkpoint(task, task.build_network()), occupied, "test")
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(("argv", "option"), [
    (["predict", "--model", "no-such-model.pt", "--data", "no-such-data", "--out", "{out}"], "--out"),
    (["export-dicom", "no-such-patient", "{out}"], "OUT"),
    (["plan", "no-such-patient", "--target-dose", "no-such-dose.csv", "--out", "{out}"], "--out"),
    (["phantoms", "{out}", "--n", "1"], "destination"),
    (["data", "simulate-mr", "no-such-data", "{out}"], "DST"),
])
def test_commands_refuse_a_non_empty_output_folder_before_any_work(occupied, argv, option):
    args = build_parser().parse_args([a.format(out=occupied) for a in argv])
    with refused(occupied, option):
        args.run(args)
    assert [p.name for p in occupied.iterdir()] == ["keep.txt"]


def test_import_dicom_refuses_a_destination_that_is_a_file(tmp_path):
    (tmp_path / "dataset").write_text("not a folder")
    args = build_parser().parse_args(["data", "import-dicom", str(tmp_path), str(tmp_path / "dataset"),
                                      "--protocol", "hn-openkbp"])
    with pytest.raises(OutputError, match="is not a folder"):
        args.run(args)
