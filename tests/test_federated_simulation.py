"""End to end through Flower's simulation engine (Ray) on generated phantoms: a 2-site x 1-round run recorded
in MLflow (run, metrics, round checkpoint, registered model usable as ``models:/``), Ray gone afterwards,
and a FedAdam or cyclic run interrupted in round 2 and resumed ends with exactly the weights of an uninterrupted
run.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from configs.compose import compose
from models.checkpoint import load_checkpoint
from models.registry import resolve_model
from server.strategies import CyclicWeightTransfer, FedAdam
from simulation.run import simulate

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


def test_two_sites_one_round_is_tracked_registered_and_leaves_no_ray_behind(uri, workdir):
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


@pytest.mark.parametrize("name, strategy", [("fedadam", FedAdam), ("cyclic", CyclicWeightTransfer)])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(name, strategy, workdir, monkeypatch):
    """FedAdam's server moments and the relay's visiting order (asked of the sites) survive the interruption."""
    monkeypatch.chdir(workdir)
    uri = f"sqlite:///{workdir / f'resume-{name}.db'}"
    base = [*TINY, f"strategy={name}", "rounds=2", f"tracking.uri={uri}"]
    uninterrupted = simulate(compose([*base, f"output={workdir / f'uninterrupted-{name}.pt'}"])).federation

    aggregate = strategy.aggregate_train

    def power_cut_in_round_two(self, server_round, replies):
        if server_round == 2:
            raise RuntimeError("power cut during round 2")
        return aggregate(self, server_round, replies)

    with monkeypatch.context() as patch:
        patch.setattr(strategy, "aggregate_train", power_cut_in_round_two)
        with pytest.raises(RuntimeError, match="power cut"):
            simulate(compose([*base, f"output={workdir / f'resumed-{name}.pt'}"]))
    client = MlflowClient(tracking_uri=uri)
    (failed,) = client.search_runs([client.get_experiment_by_name("fedrt").experiment_id],
                                   filter_string="attributes.status = 'FAILED'")
    assert [a.path for a in client.list_artifacts(failed.info.run_id, "checkpoints")] == ["checkpoints/round-0001"]

    resumed = simulate(compose([f"resume={failed.info.run_id}", f"tracking.uri={uri}"])).federation
    assert (resumed.run_id, resumed.first_round, resumed.rounds) == (failed.info.run_id, 2, 2)
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
