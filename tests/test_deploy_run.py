"""``fedrt run``'s pieces that need no running deployment: the Flower app it submits (fedrt's installed apps,
nothing to install), the overrides carried in the run config, the per-round summary, and early refusals.
"""

from __future__ import annotations

import io
import tomllib
import zipfile

import pytest
from deploy_fixtures import fedrt_run, free_port

from protocols.errors import ConfigError, DeploymentError
from server.deployed import decode_overrides, encode_overrides, round_summary
from server.rounds import RoundReport
from server.submit import build_app_fab
from wire.records import NUM_EXAMPLES


def test_submitted_app_names_fedrts_installed_apps_and_installs_nothing():
    fab = build_app_fab()
    with zipfile.ZipFile(io.BytesIO(fab.content)) as archive:
        assert set(archive.namelist()) == {"pyproject.toml", ".info/CONTENT"}  # no code travels: fedrt is installed
        project = tomllib.loads(archive.read("pyproject.toml").decode())
    assert project["project"]["dependencies"] == []  # offline sites: nothing to download
    assert project["tool"]["flwr"]["app"]["components"] == {"serverapp": "server.deployed:app",
                                                            "clientapp": "client.forwarder:app"}
    assert build_app_fab().hash_str == fab.hash_str  # the same app every time


def test_overrides_round_trip_through_the_run_config_and_bad_values_are_refused():
    overrides = ["preset=smoke", "data.root=/srv/data/it's here", "rounds=3"]
    assert decode_overrides({"overrides": encode_overrides(overrides)}) == overrides
    assert decode_overrides({}) == []
    assert decode_overrides({"overrides": "preset=smoke rounds=3"}) == ["preset=smoke", "rounds=3"]
    with pytest.raises(ConfigError, match="key=value overrides"):
        decode_overrides({"overrides": "data.root='unterminated"})


def test_round_summary_names_scores_sites_and_rejections():
    report = RoundReport(2, seconds=12.34, train_metrics={"train_loss": 0.5},
                         server_metrics={"dose_score": 3.25, NUM_EXAMPLES: 1.0},
                         site_train={"site-b": {}, "site-a": {}}, rejected={"train/site-c": "non-finite weights"})
    line = round_summary(report, 3)
    assert line.startswith("fedrt round 2/3: train_loss=0.5000 dose_score=3.2500 (12.3 s, 2 sites trained: "
                           "site-a, site-b"), line
    assert "rejected: train/site-c (non-finite weights)" in line and NUM_EXAMPLES not in line


def test_bad_override_is_refused_before_anything_is_submitted(tmp_path):
    port = free_port()  # nothing listens: a submission would fail with a connection error instead
    with pytest.raises(ValueError, match="bad configuration override"):
        fedrt_run(["no_such_key=1", "--superlink", f"127.0.0.1:{port}", "--ca", str(tmp_path / "ca.crt")])


def test_missing_ca_and_unreachable_superlink_are_named(tmp_path):
    with pytest.raises(ValueError, match="give --ca"):
        fedrt_run(["--superlink", "127.0.0.1:9092"])
    with pytest.raises(FileNotFoundError, match=r"ca\.crt from `fedrt certs init`"):
        fedrt_run(["--superlink", "127.0.0.1:9092", "--ca", str(tmp_path / "ca.crt")])
    with pytest.raises(DeploymentError, match="refused"):
        fedrt_run(["--superlink", f"127.0.0.1:{free_port()}", "--insecure"])
