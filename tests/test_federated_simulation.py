"""End to end through Flower's simulation runtime (a private SuperLink, Ray) on generated phantoms: a 2-site x
1-round run recorded in MLflow (run, metrics, round checkpoint, registered model usable as ``models:/``) that a
stale Ray cluster record does not derail, Ray gone afterwards; a FedAdam or cyclic ``fedrt simulate`` stopped by
SIGTERM after round 1 leaves no process behind, and resumed ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from configs.compose import compose
from models.checkpoint import load_checkpoint
from models.registry import resolve_model
from simulation.run import simulate
from wire.processes import descendants

# Two virtual hospitals with one training and one validation phantom each, the smoke network.
TINY = ["preset=smoke", "data.phantoms=4", "data.val_fraction=0.5", "num_sites=2", "federation.local_epochs=1",
        "train.steps_per_epoch=2"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("federated")


@pytest.fixture
def uri(workdir, monkeypatch) -> str:
    monkeypatch.chdir(workdir)  # MLflow keeps artifacts in ./mlruns beside a SQLite store
    return f"sqlite:///{workdir / 'mlflow.db'}"


def ray_processes() -> set[int]:
    """Processes of any Ray session on this machine (raylet, GCS, workers and actors)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            name = (cmdline.parent / "comm").read_text()
        except OSError:
            continue
        if any(marker in text or marker in name for marker in ("raylet", "gcs_server", "ray::", "default_worker")):
            found.add(int(cmdline.parent.name))
    return found


def wait_until_gone(pids: set[int], timeout_s: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := {p for p in pids if Path(f"/proc/{p}").exists()}) and time.monotonic() < deadline:
        time.sleep(0.5)
    return alive


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A folder right under /tmp (Ray's socket paths must stay short), removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_two_sites_one_round_is_tracked_registered_and_leaves_no_ray_behind(uri, workdir, ray_tmp, monkeypatch):
    # A cluster an earlier `ray start` recorded, long gone: a plain ray.init() would retry its address forever.
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:6391")
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    before = ray_processes()
    outcome = simulate(compose([*TINY, "rounds=1", f"tracking.uri={uri}", f"output={workdir / 'e2e.pt'}"]))
    assert not wait_until_gone(ray_processes() - before), "Ray processes left behind"

    federation = outcome.federation
    assert [s.name for s in outcome.sites] == ["site-0", "site-1"]
    assert [len(s.train) for s in outcome.sites] == [1, 1]
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(federation.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["num_sites"] == "2" and run.data.params["strategy.name"] == "fedavg"
    metrics = run.data.metrics
    for key in ("train/train_loss", "val/dose_score", "local_val/dose_score", "round/seconds", "round/overhead_s",
                "site/site-0/train/train_loss", "site/site-1/local_val/dose_score"):
        assert key in metrics, key
    assert metrics["site/site-0/train/num-examples"] == 1
    assert metrics["round/bytes_sent"] > metrics["round/bytes_received"] > 0
    assert [a.path for a in client.list_artifacts(federation.run_id, "checkpoints/round-0001")] == [
        "checkpoints/round-0001/checkpoint.pt"]

    version = client.get_model_version("fedrt-hn-openkbp-dose", federation.model_version)
    assert version.run_id == federation.run_id
    assert version.tags["sites"] == "2" and version.tags["rounds"] == "1" and "val.dose_score" in version.tags
    client.set_registered_model_alias("fedrt-hn-openkbp-dose", "production", federation.model_version)
    registered = load_checkpoint(resolve_model("models:/fedrt-hn-openkbp-dose@production", uri))
    local = load_checkpoint(federation.checkpoint)
    for key, value in local.network.state_dict().items():
        assert torch.equal(registered.network.state_dict()[key], value)


def stop_after_first_round(overrides: list[str], cwd: Path) -> str:
    """Run ``fedrt simulate`` until round 1 is done, SIGTERM it, check nothing it started lives on; its run id."""
    proc = subprocess.Popen([sys.executable, "-m", "fedrt.cli", "simulate", *overrides], cwd=cwd, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run_id, lines = None, []
    for line in proc.stdout:
        lines.append(line)
        if match := re.search(r"MLflow run ([0-9a-f]{32})", line):
            run_id = match.group(1)
        if "fedrt round 1/" in line:
            break
    started = {pid for pid, _ in descendants(proc.pid)}
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    assert proc.wait(120) == 128 + signal.SIGTERM, "".join(lines)
    assert started and not wait_until_gone(started), "processes of the stopped simulation are still running"
    assert run_id is not None, "".join(lines)
    return run_id


@pytest.mark.parametrize("name", ["fedadam", "cyclic"])
def test_a_simulation_stopped_by_sigterm_resumes_to_the_weights_of_an_uninterrupted_one(name, workdir, monkeypatch):
    """FedAdam's server moments and the relay's visiting order (asked of the sites) survive the interruption."""
    monkeypatch.chdir(workdir)
    uri = f"sqlite:///{workdir / f'resume-{name}.db'}"
    # Rounds of a few seconds: the SIGTERM lands while a later round is still running.
    base = [*TINY, "train.steps_per_epoch=16", f"strategy={name}", "rounds=3", f"tracking.uri={uri}"]
    uninterrupted = simulate(compose([*base, f"output={workdir / f'uninterrupted-{name}.pt'}"])).federation

    run_id = stop_after_first_round([*base, f"output={workdir / f'resumed-{name}.pt'}"], workdir)
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(run_id).info.status != "FINISHED"
    done = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    assert done in (["checkpoints/round-0001"], ["checkpoints/round-0001", "checkpoints/round-0002"])

    resumed = simulate(compose([f"resume={run_id}", f"tracking.uri={uri}"])).federation
    assert (resumed.run_id, resumed.first_round, resumed.rounds) == (run_id, len(done) + 1, 3)
    assert client.get_run(resumed.run_id).info.status == "FINISHED"
    expected = load_checkpoint(uninterrupted.checkpoint).network.state_dict()
    got = load_checkpoint(resumed.checkpoint).network.state_dict()
    assert resumed.checkpoint != uninterrupted.checkpoint
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_a_private_run_records_the_privacy_budget_spent_per_round(uri, workdir):
    outcome = simulate(compose([*TINY, "rounds=2", "privacy.clipping=client", "privacy.noise_multiplier=0.5",
                                f"tracking.uri={uri}", f"output={workdir / 'private.pt'}"])).federation
    client = MlflowClient(tracking_uri=uri)
    epsilon = client.get_metric_history(outcome.run_id, "privacy/epsilon")
    assert [m.step for m in epsilon] == [1, 2] and 0 < epsilon[0].value < epsilon[1].value
    assert client.get_run(outcome.run_id).data.params["privacy.clipping"] == "client"
    noise = client.get_metric_history(outcome.run_id, "privacy/noise_std")
    assert [m.value for m in noise] == pytest.approx([0.5 * 10.0 / 2] * 2)  # noise x clipping norm / 2 sites
