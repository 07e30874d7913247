"""fedrt is a Flower App: ``flwr run .`` (Flower's own command) runs the simulation's ServerApp and ClientApp
on a SuperLink in simulation mode, offline, and the run lands in MLflow as ``fedrt simulate``'s do.
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from deploy_fixtures import free_port
from mlflow import MlflowClient

from configs.compose import compose
from server.superlink import INSECURE_HOST, SuperLinkSettings, start_superlink
from simulation.app import APPS, RUN_CONFIG_DEFAULTS
from simulation.run import ray_environment
from wire.processes import flower_environment, flower_executable, stop_process, wait_until_listening

REPO = Path(__file__).resolve().parents[1]


def test_the_pyproject_names_the_simulation_apps_and_their_run_config():
    app = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert (app["components"]["serverapp"], app["components"]["clientapp"]) == APPS
    assert app["config"] == RUN_CONFIG_DEFAULTS


def test_flwr_run_trains_fedrt_on_a_simulation_superlink(tmp_path):
    settings = SuperLinkSettings(tmp_path / "superlink", host=INSECURE_HOST, port=free_port(), insecure=True,
                                 simulation=True, workdir=tmp_path)
    superlink = start_superlink(settings, tmp_path / "superlink.log", ray_environment(compose([])))
    try:
        wait_until_listening(superlink, settings.host, settings.port, tmp_path / "superlink.log")
        home = tmp_path / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(f'[superlink]\ndefault = "fedrt-test"\n\n[superlink.fedrt-test]\n'
                                          f'address = "{settings.host}:{settings.port}"\ninsecure = true\n')
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        overrides = f"preset=smoke rounds=1 data.phantoms=4 data.val_fraction=0.5 tracking.uri={uri}"
        done = subprocess.run([flower_executable("flwr"), "run", str(REPO), "fedrt-test", "--stream",
                               "--run-config", f'overrides="{overrides}"', "--federation-config", "num-supernodes=2"],
                              env=flower_environment(home), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        stop_process(superlink)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fedrt round 1/1" in done.stdout, done.stdout
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fedrt").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["num_sites"] == "2"
    assert "val/dose_score" in run.data.metrics
