"""Faults in a real deployment on 127.0.0.1 (TLS, node authentication, 2 SuperNodes, ``fedrt run``): a node
killed mid-run does not stop the run when ``federation.min_*_nodes`` allow the nodes that remain.
Every process is started and stopped here, by PID.
"""

from __future__ import annotations

import threading

import pytest
from deploy_fixtures import Deployment, fedrt_run, link_site, smoke_overrides, two_sites
from mlflow import MlflowClient


@pytest.mark.slow
def test_run_completes_with_the_remaining_node_when_one_is_killed_mid_round(tmp_path, openkbp_root, capsys):
    server_data = link_site(tmp_path / "server-data", openkbp_root, ["pt_5"], ["pt_203"])
    overrides = [*smoke_overrides(tmp_path, server_data), "federation.min_available_nodes=1",
                 "federation.min_train_nodes=1", "federation.min_evaluate_nodes=1", "federation.round_timeout_s=180"]
    codes: list[int] = []
    with Deployment(tmp_path, two_sites(tmp_path, openkbp_root)) as deployment:
        submitted = threading.Thread(target=lambda: codes.append(fedrt_run(
            [*overrides, "--superlink", str(deployment.endpoint), "--ca", str(deployment.certs.ca_cert)])))
        submitted.start()
        try:
            deployment.wait_for_app("site-b", timeout_s=180)  # site-b is working on round 1
            deployment.kill_node("site-b")
        finally:
            submitted.join(timeout=600)
        assert deployment.nodes["site-b"].returncode == -9
    out = capsys.readouterr().out
    assert not submitted.is_alive() and codes == [0], out[-3000:]
    assert "completed" in out.splitlines()[-1]
    assert "fedrt round 2/2: " in out and "1 sites trained: site-a)" in out.split("fedrt round 2/2: ")[1]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fedrt").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/train_loss")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "site/site-a/train/num-examples")] == [1, 2]
    assert 2 not in [m.step for m in client.get_metric_history(run.info.run_id, "site/site-b/train/num-examples")]
    assert (tmp_path / "federated.pt").is_file()
