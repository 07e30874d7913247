"""End to end through Flower's deployment engine on 127.0.0.1: a SuperLink with TLS and node authentication,
two registered SuperNodes on their own real OpenKBP patients, and ``fedrt run`` submitting fedrt's own Flower
app (``server.deployed:app`` + ``client.forwarder:app``) for 2 rounds at smoke size, detached, then attached to
with ``fedrt run --follow`` and followed to its end, recorded in MLflow by the ServerApp. Every process is started
and stopped here, by PID.
"""

from __future__ import annotations

import re

import pytest
from deploy_fixtures import Deployment, fedrt_run, link_site, smoke_overrides, two_sites
from mlflow import MlflowClient

from server.deployed import SERVER_LOG


@pytest.mark.slow
def test_fedrt_run_trains_two_tls_authenticated_nodes_two_rounds_recorded_in_mlflow(tmp_path, openkbp_root, capsys):
    server_data = link_site(tmp_path / "server-data", openkbp_root, ["pt_5"], ["pt_203"])
    sites = two_sites(tmp_path, openkbp_root)
    with Deployment(tmp_path, sites) as deployment:
        assert fedrt_run([*smoke_overrides(tmp_path, server_data), *deployment.flags, "--detach"]) == 0
        run_id = re.search(r"fedrt run --follow (\d+) ", capsys.readouterr().out).group(1)
        code = fedrt_run(["--follow", run_id, *deployment.flags])  # attach to the detached run
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    # followed: progress and a per-round summary naming both sites, then the outcome
    assert "fedrt round 1/2: train_loss=" in out and "fedrt round 2/2: train_loss=" in out
    assert "2 sites trained: site-a, site-b" in out
    assert "completed" in out.splitlines()[-1]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fedrt").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["fedrt.kind"] == "federated"
    assert f"MLflow run {run.info.run_id}" in out
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/train_loss")] == [1, 2]
    metrics = run.data.metrics
    for name in sites:
        assert metrics[f"site/{name}/train/num-examples"] == 2
        assert f"site/{name}/local_val/dose_score" in metrics
    assert "val/dose_score" in metrics  # the server's own validation patient
    assert (tmp_path / "federated.pt").is_file()
    # the ServerApp ran in the SuperLink's state folder: MLflow's artifacts are there, and its log
    assert run.info.artifact_uri.startswith(str(deployment.settings.state_dir))
    server_log = (deployment.settings.state_dir / SERVER_LOG).read_text()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO "
    assert re.search(stamp + r"server.output: fedrt round 2/2: train_loss=", server_log), server_log[-2000:]
    for name in sites:  # and each node's own log says what it did, timestamped
        node_log = (tmp_path / f"{name}-state" / "supernode.log").read_text()
        assert re.search(r"\dZ INFO fedrt.site: round 2: trained on 2 patients, 2 steps", node_log), node_log[-2000:]
        assert re.search(r"\dZ INFO fedrt.site: round \d: evaluated the global model on 1 patients", node_log)
