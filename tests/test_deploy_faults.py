"""Faults in a real deployment on 127.0.0.1 (TLS, node authentication, 2 SuperNodes, ``fedrt run``): a node
killed mid-run does not stop the run when ``federation.min_*_nodes`` allow the nodes that remain; a server killed
mid-run and restarted resumes the run by itself while ``fedrt run`` keeps following; a node unregistered mid-round
ends the run within the bounded waits, named; a node killed and restarted at once rejoins and trains. Every process
is started and stopped here, by PID.
"""

from __future__ import annotations

import re
import threading
import time

import pytest
from deploy_fixtures import Deployment, fedrt_run, link_site, smoke_overrides, two_sites
from mlflow import MlflowClient

from server.nodes import SuperLinkControl
from server.resume import RESUMED_TAG


class Submitted:
    """``fedrt run`` in a thread, as an operator's terminal follows a run while the test provokes a fault."""

    def __init__(self, deployment: Deployment, overrides: list[str]):
        self.codes: list[int] = []
        self.thread = threading.Thread(target=lambda: self.codes.append(fedrt_run([*overrides, *deployment.flags])))
        self.thread.start()

    def finish(self, timeout_s: float = 600) -> int | None:
        """Its exit code once it ended (None: still running after ``timeout_s``, or it raised)."""
        self.thread.join(timeout_s)
        return None if self.thread.is_alive() or not self.codes else self.codes[0]


@pytest.mark.slow
def test_run_completes_with_the_remaining_node_when_one_is_killed_mid_round(tmp_path, openkbp_root, capsys):
    server_data = link_site(tmp_path / "server-data", openkbp_root, ["pt_5"], ["pt_203"])
    overrides = [*smoke_overrides(tmp_path, server_data), "federation.min_available_nodes=1",
                 "federation.min_train_nodes=1", "federation.min_evaluate_nodes=1", "federation.round_timeout_s=180"]
    with Deployment(tmp_path, two_sites(tmp_path, openkbp_root)) as deployment:
        submitted = Submitted(deployment, overrides)
        try:
            deployment.wait_for_app("site-b", timeout_s=180)  # site-b is working on round 1
            deployment.kill_node("site-b")
        finally:
            code = submitted.finish()
        assert deployment.nodes["site-b"].returncode == -9
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "completed" in out.splitlines()[-1]
    assert "fedrt round 2/2: " in out and "1 sites trained: site-a)" in out.split("fedrt round 2/2: ")[1]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fedrt").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/train_loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "site/site-a/train/num-examples")] == [1, 2]
    assert 2 not in [m.step for m in client.get_metric_history(run.info.run_id, "site/site-b/train/num-examples")]
    assert (tmp_path / "federated.pt").is_file()


def wait_for_checkpoint(client: MlflowClient, timeout_s: float) -> str:
    """The id of the MLflow run once it holds its first round checkpoint."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        experiment = client.get_experiment_by_name("fedrt")
        for run in client.search_runs([experiment.experiment_id]) if experiment else []:
            if client.list_artifacts(run.info.run_id, "checkpoints"):
                return run.info.run_id
        time.sleep(0.5)
    raise TimeoutError(f"no round checkpoint within {timeout_s:g} s")


@pytest.mark.slow
def test_a_server_killed_mid_run_and_restarted_resumes_the_run_by_itself_and_fedrt_run_follows_it(tmp_path,
                                                                                                  openkbp_root,
                                                                                                  capsys):
    """SIGKILL of the whole server after round 1 of 3: the restarted server resumes the run from its round
    checkpoint without a ``resume=``, records that in the MLflow run, and the one ``fedrt run`` keeps following.
    """
    server_data = link_site(tmp_path / "server-data", openkbp_root, ["pt_5"], ["pt_203"])
    overrides = smoke_overrides(tmp_path, server_data, rounds=3)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with Deployment(tmp_path, two_sites(tmp_path, openkbp_root)) as deployment:
        submitted = Submitted(deployment, overrides)
        try:
            run_id = wait_for_checkpoint(client, timeout_s=300)
            deployment.kill_superlink()
            assert submitted.thread.is_alive()  # the follower waits for the server to come back
            deployment.restart_superlink()
        finally:
            code = submitted.finish()
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "lost the server" in out and f"which resumes MLflow run {run_id}" in out, out[-3000:]
    assert re.search(rf"finished rounds [23]\.\.3; MLflow run {run_id}", out), out[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fedrt").experiment_id])
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert "cut off by a server restart" in run.data.tags[RESUMED_TAG]
    assert sorted({m.step for m in client.get_metric_history(run_id, "train/train_loss")}) == [1, 2, 3]
    assert len(client.list_artifacts(run_id, "checkpoints")) == 3


@pytest.mark.slow
def test_a_node_unregistered_mid_round_ends_the_run_within_the_bounded_waits_naming_its_site(tmp_path, openkbp_root,
                                                                                               capsys):
    """Flower's strategies would wait for the lost node for ever; fedrt gives up after node_wait_s (or the round
    timeout), names the site by the name it gave in round 1, and leaves round 1's checkpoint to resume from.
    """
    server_data = link_site(tmp_path / "server-data", openkbp_root, ["pt_5"], ["pt_203"])
    node_wait_s, round_timeout_s = 15, 45
    overrides = [*smoke_overrides(tmp_path, server_data, rounds=3), f"federation.node_wait_s={node_wait_s}",
                 f"federation.round_timeout_s={round_timeout_s}"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with Deployment(tmp_path, two_sites(tmp_path, openkbp_root)) as deployment:
        submitted = Submitted(deployment, overrides)
        try:
            run_id = wait_for_checkpoint(client, timeout_s=300)  # round 1 is done: every site gave its name
            deployment.wait_for_app("site-b", timeout_s=120)
            with SuperLinkControl(deployment.access) as control:
                control.unregister("site-b")
            lost_at = time.monotonic()
        finally:
            code = submitted.finish()
        ended_after = time.monotonic() - lost_at
    out = capsys.readouterr().out
    assert code not in (None, 0), out[-3000:]
    assert ended_after <= node_wait_s + round_timeout_s + 15, ended_after  # + the run's own shutdown
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d fedrt round 1/3: ", out), out[-3000:]
    assert "fedrt: run stopped: round 2" in out and "site-b" in out.split("fedrt: run stopped")[1], out[-3000:]
    assert client.get_run(run_id).info.status == "FAILED"
    assert [a.path.rsplit("/", 1)[1] for a in client.list_artifacts(run_id, "checkpoints")] == ["round-0001"]


@pytest.mark.slow
def test_a_node_killed_and_restarted_at_once_rejoins_within_30_s_and_trains_the_next_round(tmp_path, openkbp_root,
                                                                                             capsys):
    """Flower counts a killed node online for two missed heartbeats (about a minute) and refuses it until then;
    the restarted node ends its old session itself and is back at once.
    """
    server_data = link_site(tmp_path / "server-data", openkbp_root, ["pt_5"], ["pt_203"])
    overrides = [*smoke_overrides(tmp_path, server_data, rounds=3), "federation.min_train_nodes=1",
                 "federation.min_evaluate_nodes=1", "federation.round_timeout_s=60"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    with Deployment(tmp_path, two_sites(tmp_path, openkbp_root)) as deployment:
        submitted = Submitted(deployment, overrides)
        try:
            run_id = wait_for_checkpoint(client, timeout_s=300)
            deployment.kill_node("site-b")
            deployment.restart_node("site-b")
            restarted = time.monotonic()
            with SuperLinkControl(deployment.access) as control:
                deployment.wait_online(control, 30, "rejoin within 30 s")
            rejoined_s = time.monotonic() - restarted
            assert deployment.nodes["site-b"].poll() is None, (tmp_path / "site-b.log").read_text()[-2000:]
        finally:
            code = submitted.finish()
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert rejoined_s <= 30
    assert 3 in [m.step for m in client.get_metric_history(run_id, "site/site-b/train/num-examples")], out[-3000:]
