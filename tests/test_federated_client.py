"""The hospital's ClientApp called directly, as a SuperNode would: it trains on the site's own folder
(``data-path`` from the node config) and replies with weights, scalar metrics and its pseudonym only.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity

from client.app import OPTIMIZER_KEY, make_client_app
from client.site import data_path, round_seed
from configs.compose import compose
from models.centralized import data_config, task_from_config
from protocols.splits import select_patients
from server.federation import site_plan
from simulation.partition import write_sites
from wire.failures import DATA_INVALID, NO_USABLE_DATA, NODE_WORKER, SITE_CONFIG
from wire.plan import decode_plan
from wire.processes import start_process, stop_process
from wire.records import EVAL_SECONDS, EVALUATE_RECEIVED, NUM_EXAMPLES, PLAN, RECEIVED_METRICS
from wire.sites import WORKER_CONFIG, own_site_name

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
    folders = select_patients(data_config(config), task.protocol, config.seed)
    (site,) = write_sites(tmp_path_factory.mktemp("hospital") / "sites", [folders.train[:1]], [folders.val[:1]])
    return site.path, site_plan(config, task), ArrayRecord(task.build_network().state_dict())


def context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=42, node_config=node_config, state=RecordDict(), run_config={})


def instruction(kind: str, arrays: ArrayRecord, plan: str) -> Message:
    return Message(RecordDict({"arrays": arrays, "config": ConfigRecord({PLAN: plan, "server-round": 1})}),
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
    assert set(metrics) == {NUM_EXAMPLES, "train_loss", "train_seconds", "train_steps"}
    assert metrics[NUM_EXAMPLES] == 1 and metrics["train_steps"] == 2 and np.isfinite(metrics["train_loss"])
    sent, got = message.content["arrays"], reply.content["arrays"]
    assert list(got) == list(sent)
    assert any(not np.array_equal(got[k].numpy(), sent[k].numpy()) for k in sent)
    again = make_client_app()(instruction(MessageType.TRAIN, global_model, plan), node)
    for key in got:  # the same round at the same site trains identically
        np.testing.assert_array_equal(again.content["arrays"][key].numpy(), got[key].numpy())


def test_with_keep_optimizer_state_a_site_continues_its_adamw_moments_on_the_node(hospital):
    path, default_plan, global_model = hospital
    config = compose([*OVERRIDES, "federation.keep_optimizer_state=true"])
    plan = site_plan(config, task_from_config(config))
    node = context({"data-path": str(path)})
    steps = []
    for server_round in (1, 2):
        message = instruction(MessageType.TRAIN, global_model, plan)
        message.content["config"]["server-round"] = server_round
        reply = make_client_app()(message, node)
        assert set(reply.content) == {"arrays", "metrics", "site"}  # the state is not sent
        state = torch.load(io.BytesIO(node.state[OPTIMIZER_KEY]["adamw"]), weights_only=True)
        steps.append(int(state["state"][0]["step"]))
    assert steps == [2, 4]  # round 2 continued round 1's two steps
    fresh = context({"data-path": str(path)})
    make_client_app()(instruction(MessageType.TRAIN, global_model, default_plan), fresh)
    assert OPTIMIZER_KEY not in fresh.state


def wire_bytes(message: Message) -> bytes:
    """Every object Flower serialises to send this message (the message, its records, their arrays)."""
    return b"".join(obj.deflate() for obj in get_all_nested_objects(message).values())


@pytest.mark.parametrize("kind", [MessageType.TRAIN, MessageType.EVALUATE])
def test_what_a_node_sends_is_weights_scalar_metrics_and_its_pseudonym_only(hospital, kind):
    path, plan, global_model = hospital
    reply = make_client_app()(instruction(kind, global_model, plan),
                              context({"data-path": str(path), "site-name": "hospital-a"}))
    wire = wire_bytes(reply)
    files = [f for f in path.rglob("*") if f.is_file() or f.is_symlink()]
    patients = {f.parent.name for f in files}
    assert patients and files
    for secret in {str(path), path.name, *patients, *(f.name for f in files), *(f.stem for f in files)}:
        assert secret.encode() not in wire, f"{secret!r} left the node"
    array_bytes = sum(record.count_bytes() for record in reply.content.array_records.values())
    arrays = sum(len(record) for record in reply.content.array_records.values())
    # beyond the weights: per array its dtype, shape, chunk and object ids; then metric names, values, pseudonym
    assert len(wire) - array_bytes < 400 * arrays + 1024
    for record in reply.content.array_records.values():
        assert [(k, tuple(a.shape)) for k, a in record.items()] == [(k, tuple(a.shape)) for k, a in
                                                                    global_model.items()]
    (metrics,) = reply.content.metric_records.values()
    assert all(isinstance(v, int | float) for v in metrics.values())


def update_norm(arrays: ArrayRecord, reference: ArrayRecord) -> float:
    """L2 norm of a site's update: its weights minus the global weights, over every tensor."""
    return float(np.sqrt(sum(((arrays[k].numpy() - reference[k].numpy()) ** 2).sum() for k in reference)))


def test_the_site_clips_its_update_when_the_server_runs_client_side_privacy(hospital):
    path, plan, global_model = hospital
    message = instruction(MessageType.TRAIN, global_model, plan)
    message.content["config"][KEY_CLIPPING_NORM] = 0.05
    reply = make_client_app()(message, context({"data-path": str(path)}))
    assert not reply.has_error()
    unclipped = make_client_app()(instruction(MessageType.TRAIN, global_model, plan),
                                  context({"data-path": str(path)})).content["arrays"]
    assert update_norm(unclipped, global_model) > 0.5
    assert update_norm(reply.content["arrays"], global_model) == pytest.approx(0.05, rel=1e-3)


def test_evaluate_reports_the_tasks_site_metrics_on_local_validation_cases(hospital):
    path, plan, global_model = hospital
    reply = make_client_app()(instruction(MessageType.EVALUATE, global_model, plan), context({"data-path": str(path)}))
    assert set(reply.content) == {"metrics", "site"}
    assert set(reply.content["metrics"]) == {"dose_score", "dvh_score", NUM_EXAMPLES, EVAL_SECONDS}
    assert reply.content["metrics"][NUM_EXAMPLES] == 1


def test_a_training_message_that_asks_scores_the_received_model_first_as_evaluate_would(hospital):
    """Folded evaluation (one message per round): the training reply carries the received model's scores, the
    same an evaluation message would have given, in a record of their own; the weights are trained as without.
    """
    path, plan, global_model = hospital
    node = context({"data-path": str(path)})
    message = instruction(MessageType.TRAIN, global_model, plan)
    message.content["config"]["server-round"] = 2
    message.content["config"][EVALUATE_RECEIVED] = True
    reply = make_client_app()(message, node)
    assert set(reply.content) == {"arrays", "metrics", "site", RECEIVED_METRICS}
    scores = reply.content[RECEIVED_METRICS]
    alone = make_client_app()(instruction(MessageType.EVALUATE, global_model, plan), node).content["metrics"]
    assert set(scores) == set(alone) and scores[NUM_EXAMPLES] == 1
    for key in ("dose_score", "dvh_score"):
        assert scores[key] == pytest.approx(alone[key], rel=1e-6)
    plain = instruction(MessageType.TRAIN, global_model, plan)
    plain.content["config"]["server-round"] = 2
    trained = make_client_app()(plain, node).content["arrays"]
    for key in trained:
        np.testing.assert_array_equal(reply.content["arrays"][key].numpy(), trained[key].numpy())


def test_a_node_without_data_path_is_told_how_to_start():
    with pytest.raises(ValueError, match="data-path"):
        data_path(context({}))
    def locate(ctx):
        return Path("/sites") / f"site-{ctx.node_config['partition-id']}"

    assert data_path(context({"partition-id": 1}), locate) == Path("/sites/site-1")
    assert data_path(context({"data-path": "/srv/data", "partition-id": 1}), locate) == Path("/srv/data")


def test_site_names_and_seeds_are_stable_pseudonyms():
    assert own_site_name(context({"partition-id": 3})) == "site-3"
    assert own_site_name(context({})).startswith("node-") and "42" not in own_site_name(context({}))
    assert round_seed(0, 2, "site-1") == round_seed(0, 2, "site-1")
    assert len({round_seed(0, r, s) for r in (1, 2) for s in ("site-0", "site-1")}) == 4


def test_the_learning_rate_schedule_runs_over_the_rounds_and_is_constant_within_one():
    config = compose([*OVERRIDES, "rounds=4", "train.lr=0.01", "train.average_from=0.8", "train.validate_every_min=10"])
    plan = decode_plan(ConfigRecord({PLAN: site_plan(config, task_from_config(config))}))
    rates = [plan.round_settings(r).lr for r in (1, 2, 3, 4)]
    # cosine from 0.01 to 2% of it over the run: rounds start at progress 0, 1/4, 1/2, 3/4
    assert rates == pytest.approx([0.01 * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * p))) for p in (0, .25, .5, .75)])
    assert {plan.round_settings(r).schedule for r in (1, 4)} == {"constant"}
    assert plan.round_settings(1).epochs == config.federation.local_epochs
    # whole-run settings stay out of a round's slice of the run
    assert plan.train.average_from == 0.8
    assert (plan.round_settings(2).average_from, plan.round_settings(2).validate_every_min) == (None, None)


def broken_hospital(path: Path, tmp_path: Path) -> Path:
    """A copy of the hospital with one more patient, its folder named like an identifier, whose CT is cut."""
    site = tmp_path / "hospital-copy"
    shutil.copytree(path, site, symlinks=False)
    good = next((site / "train-pats").iterdir())
    broken = site / "validation-pats" / "pt_SECRET-4711"
    shutil.copytree(good, broken)
    ct = next(broken.glob("ct.csv*"))
    ct.write_bytes(ct.read_bytes()[: ct.stat().st_size // 2])
    return site


@pytest.mark.parametrize("kind", [MessageType.TRAIN, MessageType.EVALUATE])
def test_a_failing_site_replies_with_a_fixed_code_and_message_only(hospital, tmp_path, kind):
    """Under policy=raise a broken patient stops the site; what travels is the code, the fixed text and the
    site's pseudonym, never the exception's text (the patient's folder, the data path).
    """
    path, _, global_model = hospital
    site = broken_hospital(path, tmp_path)
    config = compose([*OVERRIDES, "policy=raise"])
    plan = site_plan(config, task_from_config(config))
    reply = make_client_app()(instruction(kind, global_model, plan),
                              context({"data-path": str(site), "site-name": "hospital-a"}))
    assert reply.has_error()
    assert (reply.error.code, reply.error.reason) == (DATA_INVALID.code, f"[site hospital-a] {DATA_INVALID.message}")
    wire = wire_bytes(reply)
    for secret in ("SECRET-4711", str(site), "ct.csv", str(tmp_path)):
        assert secret.encode() not in wire, f"{secret!r} left the node"


def test_a_site_with_no_usable_patient_or_no_data_path_says_so_by_code(hospital, tmp_path):
    _, plan, global_model = hospital
    empty = tmp_path / "empty-site"
    (empty / "train-pats").mkdir(parents=True)
    reply = make_client_app()(instruction(MessageType.TRAIN, global_model, plan), context({"data-path": str(empty)}))
    assert reply.error.code == NO_USABLE_DATA.code and str(empty) not in reply.error.reason
    reply = make_client_app()(instruction(MessageType.TRAIN, global_model, plan), context({}))
    assert (reply.error.code, reply.error.reason) == (SITE_CONFIG.code, f"[site {own_site_name(context({}))}] "
                                                                       f"{SITE_CONFIG.message}")


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A node's warm worker process on a Unix socket, started and stopped here by PID."""
    state = tmp_path_factory.mktemp("node") / "state"  # the worker makes its folder (owner-only)
    path, log = state / "worker.sock", state.parent / "worker.log"
    proc = start_process([sys.executable, "-m", "client.worker", "--socket", str(path)], dict(os.environ), log)
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    yield path
    stop_process(proc)


def test_the_forwarder_gets_the_workers_reply_equal_to_training_in_process(hospital, worker):
    """The per-message ClientApp only relays: the worker trains exactly as the ClientApp itself would, keeps
    the site's optimizer state in the node's Context, and the channel is the node user's only.
    """
    from client.forwarder import app as forwarder

    path, _, global_model = hospital
    config = compose([*OVERRIDES, "federation.keep_optimizer_state=true"])
    plan = site_plan(config, task_from_config(config))
    settings = {"data-path": str(path), "site-name": "hospital-a"}
    relayed_node, local_node = context({**settings, WORKER_CONFIG: str(worker)}), context(settings)
    relayed = forwarder(instruction(MessageType.TRAIN, global_model, plan), relayed_node)
    local = make_client_app()(instruction(MessageType.TRAIN, global_model, plan), local_node)
    assert not relayed.has_error() and dict(relayed.content["site"]) == {"name": "hospital-a"}
    for key in local.content["arrays"]:
        np.testing.assert_array_equal(relayed.content["arrays"][key].numpy(), local.content["arrays"][key].numpy())
    assert OPTIMIZER_KEY in relayed_node.state
    assert stat.S_IMODE(worker.stat().st_mode) == 0o600 and stat.S_IMODE(worker.parent.stat().st_mode) == 0o700
    scores = forwarder(instruction(MessageType.EVALUATE, global_model, plan), relayed_node)
    assert set(scores.content["metrics"]) == {"dose_score", "dvh_score", NUM_EXAMPLES, EVAL_SECONDS}


def test_a_failure_in_the_worker_or_a_missing_worker_travels_as_a_fixed_code(hospital, worker, tmp_path):
    from client.forwarder import app as forwarder

    path, _, global_model = hospital
    site = broken_hospital(path, tmp_path)
    config = compose([*OVERRIDES, "policy=raise"])
    plan = site_plan(config, task_from_config(config))
    reply = forwarder(instruction(MessageType.TRAIN, global_model, plan),
                      context({"data-path": str(site), WORKER_CONFIG: str(worker)}))
    assert reply.error.code == DATA_INVALID.code and "SECRET" not in reply.error.reason
    reply = forwarder(instruction(MessageType.TRAIN, global_model, plan),
                      context({"data-path": str(site), WORKER_CONFIG: str(tmp_path / "gone.sock")}))
    assert reply.error.code == NODE_WORKER.code and str(tmp_path) not in reply.error.reason


def test_the_worker_drops_a_message_whose_time_ran_out_before_its_turn(hospital, worker):
    """The server no longer waits for it, and its ClientApp has ended: it is not run (the channel just closes)."""
    from client.worker import forward

    path, plan, global_model = hospital
    node = context({"data-path": str(path), WORKER_CONFIG: str(worker)})
    with pytest.raises(EOFError):
        forward(worker, instruction(MessageType.TRAIN, global_model, plan), node, time.monotonic() - 1.0)
    assert OPTIMIZER_KEY not in node.state
    assert "dropped a train message whose time ran out" in (worker.parent.parent / "worker.log").read_text()
