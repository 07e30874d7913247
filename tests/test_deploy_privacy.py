"""Nothing identifying leaves a node, checked on a real deployment on 127.0.0.1 (TLS, node authentication, two
SuperNodes, ``fedrt run``): a site holding a broken patient under ``policy=raise`` fails the run; the patient's
folder name and the site's data path appear nowhere on the server side, and no model is registered.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
from deploy_fixtures import Deployment, fedrt_run, link_site, smoke_overrides
from mlflow import MlflowClient

SECRET_PATIENT = "pt_SECRET-4711"
SECRET_FOLDER = "hospital-b-data-QX93"


def broken_site(tmp_path: Path, openkbp_root: Path) -> Path:
    """A hospital folder with two good patients and one whose CT file is cut in half."""
    site = link_site(tmp_path / SECRET_FOLDER, openkbp_root, ["pt_3", "pt_4"], ["pt_202"])
    broken = site / "train-pats" / SECRET_PATIENT
    shutil.copytree(openkbp_root / "train-pats" / "pt_5", broken)
    ct = broken / "ct.csv.gz"
    ct.write_bytes(ct.read_bytes()[: ct.stat().st_size // 2])
    return site


def files_holding(folder: Path, secrets: list[bytes]) -> list[str]:
    """The files under ``folder`` whose bytes contain any of ``secrets``."""
    return [str(f) for f in folder.rglob("*") if f.is_file() and any(s in f.read_bytes() for s in secrets)]


@pytest.mark.slow
def test_a_broken_patient_name_and_the_data_path_never_reach_the_server(tmp_path, openkbp_root, capsys):
    server_data = link_site(tmp_path / "server-data", openkbp_root, ["pt_5"], ["pt_203"])
    sites = {"site-a": link_site(tmp_path / "site-a", openkbp_root, ["pt_1", "pt_2"], ["pt_201"]),
             "site-b": broken_site(tmp_path, openkbp_root)}
    overrides = [*smoke_overrides(tmp_path, server_data, rounds=1), "policy=raise", "tracking.register=true"]
    with Deployment(tmp_path, sites) as deployment:
        code = fedrt_run([*overrides, *deployment.flags])
    out = capsys.readouterr().out
    assert code != 0, out[-3000:]
    assert "site-b: site data invalid" in out and "only 1 of the 2 required sites" in out, out[-3000:]
    secrets = [SECRET_PATIENT.encode(), SECRET_FOLDER.encode()]
    assert not any(s.decode() in out for s in secrets), out[-3000:]
    assert not files_holding(deployment.settings.state_dir, secrets)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fedrt")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert not client.search_model_versions("")  # no model from one site
    assert not (tmp_path / "federated.pt").exists()
    artifacts = Path(urlparse(experiment.artifact_location).path)
    server_side = [tmp_path / "mlflow.db", artifacts, deployment.settings.state_dir]
    for place in server_side:
        leaks = files_holding(place, secrets) if place.is_dir() else (
            [str(place)] if any(s in place.read_bytes() for s in secrets) else [])
        assert not leaks, f"{leaks} hold a patient's folder name or the site's data path"
    node_log = (tmp_path / "site-b.log").read_text()
    assert SECRET_PATIENT in node_log  # the detail stays in the node's own log
