"""``fedrt listen``: a real node process on 127.0.0.1 fed by dcmtk's storescu and echoscu, sending its results to a
dcmtk storescp started by the test; plus the node's parts (settings, tracker, job choice, redaction) on their own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from external import require_tool
from omegaconf import OmegaConf

from configs.compose import compose
from fedrt.cli import main
from models.centralized import run_training
from protocols.dicom.export import StudyContext, centred_grid, export_case, write_ct_series
from protocols.errors import ConfigError, DicomError
from protocols.openkbp import load_openkbp_case
from runtime.listener.audit import REDACTED, read_audit, redact
from runtime.listener.jobs import JobKind, choose_job, inspect_study
from runtime.listener.settings import ListenerSettings
from runtime.listener.store import StudyStore, study_key
from runtime.listener.tracker import State, StudyTracker

REPO = Path(__file__).resolve().parents[1]
DCMTK = "apt-get install dcmtk (storescu, storescp, echoscu; CI installs it in .ci/run)"
CALLER, NODE, DEST = "CT_SIM", "FEDRT", "PACS"
SLICES = slice(44, 84)  # 40 slices of the shared patient: a real CT, small enough to send in a second or two
WAIT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def seg_model_path(openkbp_root, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "seg.pt"
    config = compose(["preset=smoke", "task=seg", f"data.root={openkbp_root}", "data.max_val_cases=0",
                      f"output={path}"])
    return run_training(config, progress=False).checkpoint


@pytest.fixture(scope="module")
def patient(openkbp_root, protocol):
    case, _ = load_openkbp_case(openkbp_root / "validation-pats" / "pt_201", protocol, require_dose=False)
    return case


def write_ct(case, folder: Path, n_slices: int | None = None) -> tuple[Path, StudyContext, str]:
    """A CT series of the patient (40 slices) in its own new study; ``n_slices`` keeps only the first few files."""
    ct = case.ct_hu[:, :, SLICES]
    context = StudyContext(case.patient_id, patient_name="Doe^Jane")
    folder.mkdir(parents=True)
    reference, files = write_ct_series(ct, centred_grid(ct.shape, case.spacing_mm), folder, context)
    for extra in files[n_slices or len(files):]:
        extra.unlink()
    return folder, context, reference.series_uid


@pytest.fixture(scope="module")
def dcmtk():
    return {name: require_tool(name, DCMTK) for name in ("storescu", "storescp", "echoscu")}


class Node:
    """A ``fedrt listen`` process with its store, stopped by its PID."""

    def __init__(self, store: Path, model: Path, dest_port: int, *overrides: str) -> None:
        self.store, self.port = store, free_port()
        self.err = store.parent / f"{store.name}-{time.monotonic_ns()}.err"
        args = [sys.executable, "-m", "fedrt.cli", "listen", f"listen.port={self.port}",
                f"listen.allowed_callers=[{CALLER}]", "listen.quiet_s=1", f"listen.store={store}",
                f"listen.destination.ae_title={DEST}", f"listen.destination.port={dest_port}",
                f"listen.seg_model={model}", "listen.dose_model=null", "listen.retry.interval_s=0.3",
                *overrides]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.started = len(self.events("node-started"))
        with open(self.err, "w") as err:
            self.proc = subprocess.Popen(args, stderr=err, stdout=subprocess.DEVNULL, env=env, cwd=store.parent)
        self.wait_for("node-started", count=self.started + 1)

    def events(self, kind: str | tuple[str, ...] | None = None) -> list[dict]:
        kinds = (kind,) if isinstance(kind, str) else kind
        return [e for e in read_audit(self.store / "audit.jsonl") if kinds is None or e["event"] in kinds]

    def wait_for(self, kind: str | tuple[str, ...], count: int = 1, study: str | None = None,
                 timeout: float = WAIT_S) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.events(kind) if study is None or e.get("study") == study]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {count} {kind!r} event(s) for {study}; node rc={self.proc.poll()}; stderr:\n"
                             f"{self.err.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=WAIT_S)


class Storescp:
    """dcmtk's storescp as the destination, writing what it receives into ``out``."""

    def __init__(self, tool: str, port: int, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.proc = subprocess.Popen([tool, "-aet", DEST, "-od", str(out), str(port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    def received(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(p) for p in sorted(self.out.iterdir()) if p.is_file()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=WAIT_S)


def storescu(tool: str, port: int, folder: Path, caller: str = CALLER) -> subprocess.CompletedProcess:
    return subprocess.run([tool, "-aet", caller, "-aec", NODE, "+sd", "+r", "127.0.0.1", str(port), str(folder)],
                          capture_output=True, text=True, timeout=WAIT_S)


def assert_references(rtstruct: pydicom.Dataset, context: StudyContext, series_uid: str) -> None:
    assert rtstruct.Modality == "RTSTRUCT"
    assert rtstruct.StudyInstanceUID == context.study_uid
    frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == context.frame_of_reference_uid
    assert frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID == series_uid


def test_node_echoes_refuses_strangers_fails_a_bad_study_and_sends_the_rtstruct_of_the_next(
        dcmtk, seg_model_path, patient, tmp_path):
    good, context, series_uid = write_ct(patient, tmp_path / "good")
    bad, bad_context, _ = write_ct(patient, tmp_path / "bad", n_slices=1)
    dest_port = free_port()
    dest = Storescp(dcmtk["storescp"], dest_port, tmp_path / "dest")
    node = Node(tmp_path / "store", seg_model_path, dest_port)
    try:
        echo = [dcmtk["echoscu"], "-aec", NODE, "127.0.0.1", str(node.port)]
        assert subprocess.run([*echo, "-aet", CALLER], capture_output=True, timeout=WAIT_S).returncode == 0
        assert subprocess.run([*echo, "-aet", "STRANGER"], capture_output=True, timeout=WAIT_S).returncode != 0
        refused = storescu(dcmtk["storescu"], node.port, good, caller="STRANGER")
        assert refused.returncode != 0
        assert [e["caller"] for e in node.wait_for("refused", count=2)] == ["STRANGER", "STRANGER"]

        assert storescu(dcmtk["storescu"], node.port, bad).returncode == 0
        assert storescu(dcmtk["storescu"], node.port, good).returncode == 0
        bad_key, good_key = study_key(bad_context.study_uid), study_key(context.study_uid)
        failed = node.wait_for("failed", study=bad_key)[0]
        sent = node.wait_for("sent", study=good_key)[0]
        assert failed["error"] == "DataValidationError" and "too-few-slices" in failed["message"]
        assert sent["destination"] == f"{DEST}@127.0.0.1:{dest_port}" and sent["files"] == 1
        done = node.wait_for("done", study=good_key)[0]
        assert done["job"] == "segment" and {"read", "predict", "write"} <= set(done["timings_s"])
        received = node.wait_for("received", study=good_key)[0]
        assert received["instances"] == SLICES.stop - SLICES.start and received["callers"] == [CALLER]
    finally:
        rc = node.stop()
        dest.stop()
    assert rc == 0 and node.events("node-stopped")
    rtstructs = dest.received()
    assert len(rtstructs) == 1
    assert_references(rtstructs[0], context, series_uid)
    log = (node.store / "audit.jsonl").read_text()
    assert "pt_201" not in log and "Doe" not in log and context.study_uid not in log and REDACTED in log
    store = StudyStore(node.store)
    assert store.study_keys() == [bad_key] and store.is_failed(bad_key)  # sent: deleted; failed: kept


def test_a_result_survives_a_restart_while_the_destination_is_down_and_is_sent_once_it_is_up(
        dcmtk, seg_model_path, patient, tmp_path):
    study, context, series_uid = write_ct(patient, tmp_path / "study")
    key, dest_port = study_key(context.study_uid), free_port()
    retry = ("listen.retry.attempts=2", "listen.retry.resend_after_s=1")
    node = Node(tmp_path / "store", seg_model_path, dest_port, *retry)
    try:
        assert storescu(dcmtk["storescu"], node.port, study).returncode == 0
        node.wait_for("started", study=key)
    finally:
        assert node.stop() == 0  # SIGTERM while it segments: the study finishes, its result stays unsent
    assert node.events("done") and node.events("node-stopped")[-1]["unsent"] == 1
    assert StudyStore(node.store).has_result(key)

    node = Node(tmp_path / "store", seg_model_path, dest_port, *retry)
    dest = None
    try:
        assert node.events("node-started")[-1]["studies_on_disk"]["ready"] == 1
        node.wait_for("send-failed", study=key)  # the restarted node tries, the destination is still down
        dest = Storescp(dcmtk["storescp"], dest_port, tmp_path / "dest")
        sent = node.wait_for("sent", study=key)[0]
    finally:
        assert node.stop() == 0
        if dest:
            dest.stop()
    assert sent["attempt"] >= 1 and not StudyStore(node.store).study_keys()
    rtstructs = dest.received()
    assert len(rtstructs) == 1
    assert_references(rtstructs[0], context, series_uid)
    assert len(node.events("done")) == 1  # the study was segmented once, before the restart


def test_node_refuses_to_start_open_to_every_caller_or_without_a_destination(tmp_path, capsys):
    assert main(["listen", f"listen.store={tmp_path / 'store'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedrt listen: error: listen.allowed_callers is empty")
    assert main(["listen", "listen.allowed_callers=[CT_SIM]"]) == 2
    assert "listen.destination needs ae_title" in capsys.readouterr().err
    section = OmegaConf.to_container(compose(["listen.allowed_callers=[CT_SIM]",
                                              "listen.destination.ae_title=PACS"]).listen)
    settings = ListenerSettings.from_mapping(section, "hn-openkbp")
    assert settings.host == "127.0.0.1" and settings.allowed_callers == ("CT_SIM",)
    assert settings.seg_model == "models:/fedrt-hn-openkbp-seg@production"
    with pytest.raises(ConfigError, match="not a DICOM AE title"):
        ListenerSettings.from_mapping({**section, "allowed_callers": ["A" * 17]}, "hn-openkbp")


def test_tracker_waits_for_the_quiet_period_and_reruns_a_study_that_grew_while_it_ran():
    now = [0.0]
    tracker = StudyTracker(quiet_s=5, clock=lambda: now[0])
    assert tracker.arrived("a", "CT_SIM") is None
    now[0] = 4.9
    tracker.arrived("a", "CT_SIM")
    now[0] = 9.8
    assert tracker.take_complete() is None  # 4.9 s since the last instance
    now[0] = 9.9
    assert tracker.take_complete().key == "a" and tracker.state("a") is State.RUNNING
    tracker.arrived("a", "CT_SIM")  # a late instance while the job runs
    assert tracker.finished("a", ok=True) is False and tracker.state("a") is State.RECEIVING
    now[0] = 15.0
    assert tracker.take_complete().key == "a"
    assert tracker.finished("a", ok=True) is True and tracker.state("a") is State.READY
    assert tracker.arrived("a", "TPS") is State.READY and tracker.state("a") is State.RECEIVING
    now[0] = 20.0
    tracker.take_complete()
    tracker.finished("a", ok=True)
    assert tracker.sent("a") and tracker.state("a") is None


def test_a_ct_with_targets_is_planned_a_ct_alone_segmented_and_no_ct_refused(patient, protocol, tmp_path):
    exported = export_case(patient, tmp_path / "full", protocol=protocol)
    contents = inspect_study(exported.folder, protocol)
    assert contents.ct_instances == 128 and contents.structure_sets == 1
    assert {"PTV70", "PTV63", "PTV56"} & set(contents.targets)
    assert choose_job(contents, can_plan=True) is JobKind.PLAN
    assert choose_job(contents, can_plan=False) is JobKind.SEGMENT
    exported.rtstruct.unlink()
    assert choose_job(inspect_study(exported.folder, protocol), can_plan=True) is JobKind.SEGMENT
    (tmp_path / "rs").mkdir()
    export_case(patient, tmp_path / "again", protocol=protocol).rtstruct.rename(tmp_path / "rs" / "RS.dcm")
    with pytest.raises(DicomError, match="holds no CT image"):
        choose_job(inspect_study(tmp_path / "rs", protocol), can_plan=True)


def test_redact_removes_every_identifier_of_the_study():
    message = "patient MRN123 (Doe^Jane) study 1.2.3.4: too-few-slices"
    assert redact(message, ["MRN123", "Doe^Jane", "Doe", "Jane", "1.2.3.4", ""]) == \
        f"patient {REDACTED} ({REDACTED}) study {REDACTED}: too-few-slices"
    assert json.dumps(redact("nothing to hide", ["x"])) == '"nothing to hide"'


@pytest.mark.slow
def test_a_ct_with_targets_comes_back_as_rtplan_and_rtdose_in_its_frame(dcmtk, seg_model_path, patient, protocol,
                                                                        openkbp_root, tmp_path):
    dose_model = run_training(compose(["preset=smoke", "task=dose", f"data.root={openkbp_root}",
                                       "data.max_val_cases=0", f"output={tmp_path / 'dose.pt'}"]),
                              progress=False).checkpoint
    context = StudyContext(patient.patient_id)
    exported = export_case(patient, tmp_path / "study", protocol=protocol, context=context)
    dest_port = free_port()
    dest = Storescp(dcmtk["storescp"], dest_port, tmp_path / "dest")
    node = Node(tmp_path / "store", seg_model_path, dest_port, f"listen.dose_model={dose_model}",
                "listen.plan.iterations=30")
    try:
        assert storescu(dcmtk["storescu"], node.port, exported.folder).returncode == 0
        outcome = node.wait_for(("sent", "failed"), study=study_key(context.study_uid), timeout=600)[0]
    finally:
        node.stop()
        dest.stop()
    assert outcome["event"] == "sent", outcome
    received = {ds.Modality: ds for ds in dest.received()}
    assert {"RTPLAN", "RTDOSE"} <= set(received)
    for ds in received.values():
        assert ds.StudyInstanceUID == context.study_uid
    assert received["RTDOSE"].FrameOfReferenceUID == context.frame_of_reference_uid
