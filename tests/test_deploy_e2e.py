"""End to end through Flower's deployment engine on 127.0.0.1: a SuperLink with TLS and node authentication,
two registered SuperNodes on their own real OpenKBP patients, a fedrt run of 2 rounds at smoke size submitted
with ``flwr run``, recorded in MLflow by the ServerApp. Every process is started and stopped here, by PID.

Until ``fedrt run`` exists, the Flower app submitted is written here: its ServerApp composes the Hydra overrides
carried in the run config and runs ``server.app.make_server_app``; its ClientApp is ``client.app:app``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from deploy_fixtures import free_port
from mlflow import MlflowClient

from client.endpoint import Endpoint
from client.processes import flower_environment, flower_executable, stop_process, wait_until_listening
from client.supernode import NodeSettings, start_supernode
from server.certs import create_node_keys, init_certificates
from server.nodes import SuperLinkControl
from server.superlink import SuperLinkSettings, start_superlink

SERVER_APP = '''"""fedrt's ServerApp for the deployment test: the Hydra overrides travel in the run config."""
import json

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedrt.config import compose
from server.app import make_server_app

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    make_server_app(compose(json.loads(str(context.run_config["overrides"]))))(grid, context)
'''

APP_PYPROJECT = '''[project]
name = "fedrt-e2e"
version = "1.0.0"
description = "fedrt deployment test app"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedrt"

[tool.flwr.app.components]
serverapp = "fedrt_e2e:app"
clientapp = "client.app:app"

[tool.flwr.app.config]
overrides = "[]"
'''


def _site(root: Path, openkbp_root: Path, train: list[str], val: list[str]) -> Path:
    for split, patients in (("train-pats", train), ("validation-pats", val)):
        (root / split).mkdir(parents=True)
        for patient in patients:
            (root / split / patient).symlink_to(openkbp_root / split / patient)
    return root


def _flwr_connection(home: Path, endpoint: Endpoint, ca: Path) -> Path:
    """A Flower CLI home whose default SuperLink connection is ``endpoint``, verified with ``ca``."""
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "fedrt"\n\n[superlink.fedrt]\naddress = "{endpoint}"\n'
                                      f'root-certificates = "{ca.resolve()}"\n')
    return home


@pytest.mark.slow
def test_two_tls_authenticated_nodes_train_two_rounds_recorded_in_mlflow(tmp_path, openkbp_root):
    server_data = _site(tmp_path / "server-data", openkbp_root, ["pt_5"], ["pt_203"])
    sites = {"site-a": _site(tmp_path / "site-a", openkbp_root, ["pt_1", "pt_2"], ["pt_201"]),
             "site-b": _site(tmp_path / "site-b", openkbp_root, ["pt_3", "pt_4"], ["pt_202"])}
    certs = init_certificates(tmp_path / "certs", ["fl.example.org"])
    settings = SuperLinkSettings(tmp_path / "state", tmp_path / "certs", "127.0.0.1", free_port())
    endpoint = Endpoint("127.0.0.1", settings.port)
    started: list[subprocess.Popen] = []
    try:
        started.append(start_superlink(settings))
        wait_until_listening(started[0], "127.0.0.1", settings.port, settings.state_dir / "superlink.console.log")
        with SuperLinkControl(endpoint, certs.ca_cert) as control:
            for name, data in sites.items():
                keys = create_node_keys(name, tmp_path / "keys")
                control.register(keys.public_key, name)
                node = NodeSettings(endpoint, certs.ca_cert, keys.private_key, data, site_name=name,
                                    runtime_port=free_port(), state_dir=tmp_path / f"{name}-state")
                started.append(start_supernode(node, tmp_path / f"{name}.log"))
            deadline = time.monotonic() + 60
            while sum(n.status == "online" for n in control.nodes()) < 2:
                assert time.monotonic() < deadline, "the two SuperNodes did not come online"
                time.sleep(0.5)

        app = tmp_path / "app"
        app.mkdir()
        (app / "fedrt_e2e.py").write_text(SERVER_APP)
        (app / "pyproject.toml").write_text(APP_PYPROJECT)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        overrides = ["preset=smoke", f"data.root={server_data}", "num_sites=2", "rounds=2", "data.max_val_cases=1",
                     "federation.local_epochs=1", "train.steps_per_epoch=2", "train.threads=1",
                     "federation.node_wait_s=120", f"tracking.uri={uri}", f"output={tmp_path / 'federated.pt'}"]
        (tmp_path / "run.toml").write_text(f"overrides = '{json.dumps(overrides)}'\n")
        home = _flwr_connection(tmp_path / "flwr-cli", endpoint, certs.ca_cert)
        submitted = subprocess.run([flower_executable("flwr"), "run", str(app), "fedrt", "--run-config",
                                    str(tmp_path / "run.toml"), "--stream"], env=flower_environment(home),
                                   capture_output=True, text=True, timeout=900)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        assert "Successfully started run" in submitted.stdout
    finally:
        for proc in reversed(started):
            stop_process(proc)

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fedrt").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["fedrt.kind"] == "federated"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/train_loss")] == [1, 2]
    metrics = run.data.metrics
    for name in sites:
        assert metrics[f"site/{name}/train/num-examples"] == 2
        assert f"site/{name}/local_val/dose_score" in metrics
    assert "val/dose_score" in metrics  # the server's own validation patient
    assert (tmp_path / "federated.pt").is_file()
    # the ServerApp ran in the SuperLink's state folder: MLflow's artifacts are there
    assert run.info.artifact_uri.startswith(str(settings.state_dir))
