"""The hospital's ClientApp called directly, as a SuperNode would: it trains on the site's own folder
(``data-path`` from the node config) and replies with weights, scalar metrics and its pseudonym only.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import make_client_app
from client.settings import PLAN_KEY
from client.site import data_path, round_seed, site_name
from fedrt.config import compose
from models.centralized import task_from_config
from server.data import patient_folders
from server.federation import site_plan
from simulation.partition import write_sites

OVERRIDES = ["preset=smoke", "data.phantoms=4", "data.val_fraction=0.5", "federation.local_epochs=1",
             "train.steps_per_epoch=2"]


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    """A hospital's dataset folder (one training, one validation phantom) and the run's plan and task."""
    config = compose(OVERRIDES)
    task = task_from_config(config)
    folders = patient_folders(dict(config.data), task.protocol, config.seed)
    (site,) = write_sites(tmp_path_factory.mktemp("hospital") / "sites", [folders.train[:1]], [folders.val[:1]])
    return site.path, site_plan(config, task), ArrayRecord(task.build_network().state_dict())


def context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=42, node_config=node_config, state=RecordDict(), run_config={})


def instruction(kind: str, arrays: ArrayRecord, plan: str) -> Message:
    return Message(RecordDict({"arrays": arrays, "config": ConfigRecord({PLAN_KEY: plan, "server-round": 1})}),
                   42, kind)


def test_train_replies_with_weights_scalar_metrics_and_a_pseudonym_only(hospital):
    path, plan, global_model = hospital
    message = instruction(MessageType.TRAIN, global_model, plan)
    node = context({"data-path": str(path), "site-name": "hospital-a"})
    reply = make_client_app()(message, node)
    assert not reply.has_error()
    assert set(reply.content) == {"arrays", "metrics", "site"}
    assert dict(reply.content["site"]) == {"name": "hospital-a"}
    metrics = reply.content["metrics"]
    assert set(metrics) == {"num-examples", "train_loss", "train_seconds", "train_steps"}
    assert metrics["num-examples"] == 1 and metrics["train_steps"] == 2 and np.isfinite(metrics["train_loss"])
    sent, got = message.content["arrays"], reply.content["arrays"]
    assert list(got) == list(sent)
    assert any(not np.array_equal(got[k].numpy(), sent[k].numpy()) for k in sent)
    again = make_client_app()(instruction(MessageType.TRAIN, global_model, plan), node)
    for key in got:  # the same round at the same site trains identically
        np.testing.assert_array_equal(again.content["arrays"][key].numpy(), got[key].numpy())


def test_evaluate_reports_the_tasks_site_metrics_on_local_validation_cases(hospital):
    path, plan, global_model = hospital
    reply = make_client_app()(instruction(MessageType.EVALUATE, global_model, plan), context({"data-path": str(path)}))
    assert set(reply.content) == {"metrics", "site"}
    assert set(reply.content["metrics"]) == {"dose_score", "dvh_score", "num-examples"}
    assert reply.content["metrics"]["num-examples"] == 1


def test_a_node_without_data_path_is_told_how_to_start():
    with pytest.raises(ValueError, match="data-path"):
        data_path(context({}))
    assert str(data_path(context({"partition-id": 1}), {0: "/a", 1: "/b"})) == "/b"


def test_site_names_and_seeds_are_stable_pseudonyms():
    assert site_name(context({"partition-id": 3})) == "site-3"
    assert site_name(context({})).startswith("node-") and "42" not in site_name(context({}))
    assert round_seed(0, 2, "site-1") == round_seed(0, 2, "site-1")
    assert len({round_seed(0, r, s) for r in (1, 2) for s in ("site-0", "site-1")}) == 4
