"""Strategies and reply screening on hand-made replies: weighted means checkable by hand, rejected replies
(NaN, wrong shape or keys, zero examples, errors) leave the round going, FedAdam and FedAvgM state survives a
checkpoint.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from server_grid import ReplyingGrid

from server.rounds import NodesLostError, RoundReport, folds_evaluation, run_rounds
from server.strategies import FedAdam, FedAvg, FedAvgM, FedProx, build_strategy
from server.validation import reply_problem
from wire.failures import DATA_INVALID, NO_REPLY, NO_USABLE_DATA, NODE_LOST, failure_error
from wire.records import EVAL_SECONDS, EVALUATE_RECEIVED, NUM_EXAMPLES, RECEIVED_METRICS, TRAIN_SECONDS
from wire.sites import node_digest_name, reply_site_name


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    """Instruction messages carry the run and node of the process that sends them (the ServerApp's)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def record(**named: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k.replace("_", "."): Array(v) for k, v in named.items()})


def arrays(value: float, shape=(2, 3)) -> ArrayRecord:
    return record(conv_weight=np.full(shape, value, np.float32), conv_bias=np.full(2, value, np.float32))


def reply(node: int, record: ArrayRecord | None, examples: float, loss: float = 0.5) -> Message:
    instruction = Message(RecordDict({"arrays": arrays(0.0)}), node, MessageType.TRAIN)
    content = RecordDict({"metrics": MetricRecord({NUM_EXAMPLES: examples, "train_loss": loss}),
                          "site": ConfigRecord({"name": f"site-{node}"})})
    if record is not None:
        content["arrays"] = record
    return Message(content, reply_to=instruction)


def configured(strategy, global_arrays: ArrayRecord) -> None:
    """What the round driver does before aggregation: remember the global model sent out this round."""
    strategy.global_arrays = global_arrays
    strategy.current_arrays = {k: v.numpy() for k, v in global_arrays.items()}


def test_fedavg_is_the_mean_weighted_by_examples():
    strategy = FedAvg(min_train_nodes=2, min_available_nodes=2)
    configured(strategy, arrays(0.0))
    merged, metrics = strategy.aggregate_train(1, [reply(1, arrays(1.0), 10, loss=1.0),
                                                   reply(2, arrays(4.0), 30, loss=3.0)])
    # (10 * 1 + 30 * 4) / 40 = 3.25 for every weight; the loss is averaged the same way: (10 + 90) / 40 = 2.5.
    for value in merged.values():
        np.testing.assert_allclose(value.numpy(), 3.25)
        assert value.numpy().dtype == np.float32
    assert metrics["train_loss"] == pytest.approx(2.5)


def test_a_nan_reply_is_rejected_with_its_reason_and_the_others_are_merged(caplog):
    strategy = FedProx(min_train_nodes=3, min_available_nodes=3, proximal_mu=0.1)
    configured(strategy, arrays(0.0))
    poisoned = record(conv_weight=np.full((2, 3), 2.0, np.float32), conv_bias=np.array([np.nan, 1.0], np.float32))
    with caplog.at_level(logging.WARNING, logger="server.validation"):
        merged, _ = strategy.aggregate_train(1, [reply(1, arrays(1.0), 1), reply(2, poisoned, 100),
                                                 reply(3, arrays(3.0), 3)])
    np.testing.assert_allclose(merged["conv.weight"].numpy(), (1 * 1.0 + 3 * 3.0) / 4)
    assert strategy.screened["train"].rejected == {"site-2": "array conv.bias: non-finite values"}
    assert "rejected the reply of site-2: array conv.bias: non-finite values" in caplog.text


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: reply(1, arrays(1.0, shape=(3, 2)), 5), "shape (3, 2), expected (2, 3)"),
    (lambda: reply(1, record(other=np.zeros(2, np.float32)), 5), "array keys differ"),
    (lambda: reply(1, record(conv_weight=np.zeros((2, 3)), conv_bias=np.zeros(2)), 5), "dtype float64"),
    (lambda: reply(1, arrays(1.0), 0), "zero examples"),
    (lambda: reply(1, arrays(1.0), 5, loss=float("inf")), "metric train_loss is not finite"),
    (lambda: reply(1, None, 5), "expected one ArrayRecord"),
])
def test_malformed_replies_are_rejected_for_a_stated_reason(make, reason):
    assert reason in reply_problem(make(), arrays(0.0))


def test_an_error_reply_is_rejected_by_its_code_alone_and_named_after_its_node():
    """The reason an error carries is never shown: it could hold a patient id or a path."""
    instruction = Message(RecordDict({"arrays": arrays(0.0)}), 7, MessageType.TRAIN)
    failed = Message(Error(code=2, reason="DataError: patient pt_6 (/data/x/pt_6) failed"), reply_to=instruction)
    assert reply_problem(failed, arrays(0.0)) == "the ClientApp failed (its text is withheld); see the node's log"
    assert reply_site_name(failed) == node_digest_name(7)
    named = Message(failure_error(DATA_INVALID, "site-b"), reply_to=instruction)
    assert reply_problem(named, arrays(0.0)) == DATA_INVALID.message and reply_site_name(named) == "site-b"
    forged = Message(Error(code=DATA_INVALID.code, reason="[site pt_6 /data] x"), reply_to=instruction)
    assert reply_problem(forged, arrays(0.0)) == DATA_INVALID.message
    assert reply_site_name(forged) == node_digest_name(7)


def test_fedadam_moments_survive_a_checkpoint_and_give_the_same_next_round():
    settings = {"name": "fedadam", "eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}
    first = build_strategy(settings, 2, 2, 2)
    configured(first, arrays(0.0))
    after_one, _ = first.aggregate_train(1, [reply(1, arrays(1.0), 1), reply(2, arrays(2.0), 1)])
    saved = {name: {k: v.copy() for k, v in moments.items()} for name, moments in first.optimizer_state().items()}
    assert set(saved) == {"m_t", "v_t"}
    round_two = [reply(1, arrays(0.5), 1), reply(2, arrays(-1.0), 3)]
    configured(first, after_one)
    uninterrupted, _ = first.aggregate_train(2, round_two)

    resumed = build_strategy(settings, 2, 2, 2)
    assert isinstance(resumed, FedAdam)
    resumed.load_optimizer_state(saved)
    configured(resumed, after_one)
    again, _ = resumed.aggregate_train(2, round_two)
    for key in uninterrupted:
        np.testing.assert_array_equal(again[key].numpy(), uninterrupted[key].numpy())
        assert again[key].numpy().dtype == np.float32


def fedavgm_round(strategy, global_arrays: ArrayRecord, round_replies: list[Message], server_round: int):
    strategy.global_arrays = global_arrays
    strategy.current_arrays = global_arrays
    merged, _ = strategy.aggregate_train(server_round, round_replies)
    return merged


def test_fedavgm_moves_by_the_momentum_of_the_mean_updates_and_resumes_it_exactly():
    settings = {"name": "fedavgm", "server_learning_rate": 1.0, "server_momentum": 0.5}
    first = build_strategy(settings, 2, 2, 2)
    assert isinstance(first, FedAvgM)
    after_one = fedavgm_round(first, arrays(0.0), [reply(1, arrays(1.0), 1), reply(2, arrays(2.0), 1)], 1)
    np.testing.assert_allclose(after_one["conv.weight"].numpy(), 1.5)  # first round: the plain mean
    saved = {name: {k: v.copy() for k, v in velocity.items()} for name, velocity in first.optimizer_state().items()}
    round_two = [reply(1, arrays(0.5), 1), reply(2, arrays(-1.0), 3)]
    uninterrupted = fedavgm_round(first, after_one, round_two, 2)
    # Mean -0.625, so the update is 1.5 - (-0.625) = 2.125 against the gradient; with momentum 0.5 the velocity
    # is 0.5 * -1.5 + 2.125 = 1.375 and the model 1.5 - 1.375 = 0.125 (plain FedAvg would give -0.625).
    np.testing.assert_allclose(uninterrupted["conv.weight"].numpy(), 0.125)

    resumed = build_strategy(settings, 2, 2, 2)
    resumed.load_optimizer_state(saved)
    again = fedavgm_round(resumed, after_one, round_two, 2)
    for key in uninterrupted:
        np.testing.assert_array_equal(again[key].numpy(), uninterrupted[key].numpy())
        assert again[key].numpy().dtype == np.float32
    with pytest.raises(ValueError, match="unknown FedAvgM state"):
        resumed.load_optimizer_state({"m_t": {}})


def test_a_round_completes_without_the_nan_site_and_reports_it():
    def respond(node: int, message: Message) -> Message:
        if message.metadata.message_type == MessageType.EVALUATE:
            content = RecordDict({"metrics": MetricRecord({NUM_EXAMPLES: 2, "dose_score": float(node)}),
                                  "site": ConfigRecord({"name": f"site-{node}"})})
            return Message(content, reply_to=message)
        value = np.nan if node == 2 else float(node)
        content = RecordDict({"arrays": arrays(value), "site": ConfigRecord({"name": f"site-{node}"}),
                              "metrics": MetricRecord({NUM_EXAMPLES: node, "train_loss": 0.1,
                                                       "train_seconds": 0.5 * node, "train_steps": 3})})
        return Message(content, reply_to=message)

    reports = []
    strategy = FedAvg(min_train_nodes=2, min_evaluate_nodes=3, min_available_nodes=3)
    final = run_rounds(strategy, ReplyingGrid([1, 2, 3], respond), arrays(0.0), 1, 1, ConfigRecord(),
                       ConfigRecord(), timeout_s=5, node_wait_s=1, on_round=lambda r, _: reports.append(r))
    np.testing.assert_allclose(final["conv.weight"].numpy(), (1 * 1.0 + 3 * 3.0) / 4)
    (report,) = reports
    assert sorted(report.site_train) == ["site-1", "site-3"]
    assert report.rejected == {"train/site-2": "array conv.weight: non-finite values"}
    assert report.slowest_site_train_s == 1.5
    assert report.evaluate_metrics["dose_score"] == pytest.approx((1 * 2 + 2 * 2 + 3 * 2) / 6)
    assert report.bytes_sent == 2 * 3 * arrays(0.0).count_bytes()  # train and evaluate messages to 3 nodes
    assert report.bytes_received == 3 * arrays(0.0).count_bytes()


def site_reply(node: int, message: Message) -> Message:
    """A healthy site's reply: weights plus one, or its validation score."""
    name = ConfigRecord({"name": f"site-{node}"})
    if message.metadata.message_type == MessageType.EVALUATE:
        return Message(RecordDict({"metrics": MetricRecord({NUM_EXAMPLES: 1, "dose_score": 1.0}), "site": name}),
                       reply_to=message)
    received = float(message.content["arrays"]["conv.weight"].numpy().flat[0])
    return Message(RecordDict({"arrays": arrays(received + 1), "site": name,
                               "metrics": MetricRecord({NUM_EXAMPLES: 1, "train_loss": 0.1, "train_seconds": 0.1,
                                                        "train_steps": 1})}), reply_to=message)


def test_too_few_nodes_fail_fast_instead_of_hanging():
    with pytest.raises(NodesLostError, match=r"round 1 training: still too few nodes after 0.2 s "
                                             r"\(1 connected, at least 2 required\)"):
        run_rounds(FedAvg(min_train_nodes=2, min_available_nodes=2), ReplyingGrid([1], site_reply), arrays(0.0),
                   1, 1, ConfigRecord(), ConfigRecord(), timeout_s=5, node_wait_s=0.2)


def test_a_node_rejoining_while_a_round_waits_for_it_is_sampled_for_that_round():
    """Flower sizes the sample from the nodes connected when the round is configured, then waits for
    min_available_nodes: a restarted site connecting during that wait would be connected but left out.
    """
    grid = ReplyingGrid([1], site_reply)
    asked = 0

    def rejoining() -> list[int]:
        nonlocal asked
        asked += 1
        return [1, 2] if asked > 2 else [1]  # site-2's node is back on the third look

    grid.get_node_ids = rejoining
    reports = []
    run_rounds(FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=2), grid, arrays(0.0), 1, 1,
               ConfigRecord(), ConfigRecord(), timeout_s=5, node_wait_s=5, on_round=lambda r, _: reports.append(r))
    assert sorted(reports[0].site_train) == ["site-1", "site-2"]


def test_a_node_lost_after_training_stops_the_evaluation_wait_naming_its_site():
    """Flower's sample_nodes would wait for the lost node for ever; the bounded grid names it instead."""
    grid = ReplyingGrid([1, 2], None)

    def respond(node: int, message: Message) -> Message:
        if message.metadata.message_type == MessageType.TRAIN and node == 2:
            grid.nodes = [1]  # site-2 answers, then its node goes away
        return site_reply(node, message)

    grid.respond = respond
    with pytest.raises(NodesLostError, match=r"round 1 evaluation: still too few nodes .* \(missing: site-2\)"):
        run_rounds(FedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2), grid, arrays(0.0), 1, 1,
                   ConfigRecord(), ConfigRecord(), timeout_s=5, node_wait_s=0.3)


def test_sites_that_do_not_reply_or_are_lost_are_named_by_their_site_name():
    """A reply Flower makes for a lost node comes from node 1 (the SuperLink): it is named after the node the
    message went to, by the name that node gave in an earlier round.
    """
    rounds: list[int] = []

    def respond(node: int, message: Message) -> Message | None:
        if message.metadata.message_type == MessageType.TRAIN and node == 2:
            rounds.append(node)
            if len(rounds) == 2:  # round 2: the SuperLink reports the node lost
                lost = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=message)
                lost.metadata.__dict__["_src_node_id"] = 1
                return lost
            if len(rounds) == 3:  # round 3: no reply at all
                return None
        return site_reply(node, message)

    reports = []
    run_rounds(FedAvg(min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=2),
               ReplyingGrid([1, 2], respond), arrays(0.0), 1, 3, ConfigRecord(), ConfigRecord(), timeout_s=5,
               node_wait_s=1, on_round=lambda r, _: reports.append(r))
    assert reports[1].rejected == {"train/site-2": NODE_LOST.message}
    assert reports[2].rejected == {"train/site-2": NO_REPLY.message}
    assert sorted(reports[2].site_train) == ["site-1"]


def test_a_round_with_fewer_usable_sites_than_min_train_nodes_stops_the_run_naming_them():
    """Nothing merged from fewer sites than the federation requires: no round report, no checkpoint."""
    def respond(node: int, message: Message) -> Message:
        if node == 2:
            return Message(failure_error(NO_USABLE_DATA, "site-2"), reply_to=message)
        return site_reply(node, message)

    reports = []
    with pytest.raises(NodesLostError, match="round 1: only 1 of the 2 required sites gave a usable update "
                                             r"\(site-2: no usable patients at the site"):
        run_rounds(FedAvg(min_train_nodes=2, min_available_nodes=2), ReplyingGrid([1, 2], respond), arrays(0.0),
                   1, 1, ConfigRecord(), ConfigRecord(), timeout_s=5, node_wait_s=1,
                   on_round=lambda r, _: reports.append(r))
    assert reports == []


def test_cyclic_relay_passes_each_sites_model_on_and_skips_the_nan_site():
    """Each site adds its node number to the weights it receives: the relay's result is the sum of the usable
    sites' additions (not a mean), the NaN site's model is not passed on, and visits follow the site names
    (asked once per node with a query message).
    """
    visits, queries = [], []

    def respond(node: int, message: Message) -> Message:
        if message.metadata.message_type == MessageType.QUERY:
            queries.append(node)
            return Message(RecordDict({"site": ConfigRecord({"name": f"site-{10 - node}"})}), reply_to=message)
        visits.append(node)
        received = message.content["arrays"]["conv.weight"].numpy()
        value = np.nan if node == 2 else float(node)
        content = RecordDict({"arrays": arrays(float(received.flat[0]) + value),
                              "site": ConfigRecord({"name": f"site-{10 - node}"}),
                              "metrics": MetricRecord({NUM_EXAMPLES: node, "train_loss": float(node),
                                                       "train_seconds": 1.0, "train_steps": 3})})
        return Message(content, reply_to=message)

    reports = []
    strategy = build_strategy({"name": "cyclic"}, 3, 2, 3, fraction_evaluate=0.0)
    final = run_rounds(strategy, ReplyingGrid([3, 1, 2], respond), arrays(0.0), 1, 2, ConfigRecord(),
                       ConfigRecord(), timeout_s=5, node_wait_s=1, on_round=lambda r, _: reports.append(r))
    np.testing.assert_allclose(final["conv.weight"].numpy(), 2 * (1.0 + 3.0))
    assert visits == [3, 2, 1, 3, 2, 1]  # by the names the sites gave when asked: site-7, site-8, site-9
    assert sorted(queries) == [1, 2, 3]  # asked once, in round 1
    assert reports[0].rejected == {"train/site-8": "array conv.weight: non-finite values"}
    assert reports[0].train_metrics["train_loss"] == pytest.approx((1 * 1 + 3 * 3) / 4)
    assert reports[0].required_train_s == 2.0  # the two accepted sites' training, one after the other


def test_cyclic_refuses_differential_privacy():
    from server.strategies.privacy import with_privacy

    with pytest.raises(ValueError, match="strategy=cyclic passes one site's model"):
        with_privacy(build_strategy({"name": "cyclic"}, 2, 2, 2), {"clipping": "server", "clipping_norm": 1.0,
                                                                  "noise_multiplier": 0.1, "target_delta": 1e-5}, 2)


def test_a_rounds_overhead_counts_the_evaluation_step_but_not_the_sites_or_servers_own_work():
    report = RoundReport(3, seconds=30.0, server_eval_s=2.0,
                         site_train={"site-a": {TRAIN_SECONDS: 20.0}, "site-b": {TRAIN_SECONDS: 15.0}},
                         slowest_site_eval_s=3.0)
    assert report.overhead_s == pytest.approx(30.0 - 20.0 - 3.0 - 2.0)
    folded = RoundReport(3, seconds=30.0, site_train=report.site_train, folded_eval_s={"site-a": 1.0, "site-b": 7.0})
    assert folded.required_train_s == 22.0  # site-b: 15 s of training after 7 s evaluating what it received
    assert folded.overhead_s == pytest.approx(30.0 - 22.0)
    relay = RoundReport(3, sequential=True, seconds=30.0, site_train=report.site_train)
    assert relay.overhead_s == 0.0  # a relay must take both sites' training: 35 s of work in a 30 s round


def test_folded_evaluation_scores_each_rounds_model_with_one_message_per_site_and_round():
    """Each round's training message asks the sites to score the model they receive (the previous round's global
    model) first; only the last round's model gets an evaluation message of its own. Every round's report ends up
    with the scores of its own global model, and the folded evaluation's time counts as the sites' work.
    """
    sent: list[tuple[int, str]] = []

    def respond(node: int, message: Message) -> Message:
        sent.append((node, message.metadata.message_type))
        received = float(message.content["arrays"]["conv.weight"].numpy().flat[0])
        name = ConfigRecord({"name": f"site-{node}"})
        score = MetricRecord({NUM_EXAMPLES: node, "dose_score": received + node, EVAL_SECONDS: 2.0})
        if message.metadata.message_type == MessageType.EVALUATE:
            return Message(RecordDict({"metrics": score, "site": name}), reply_to=message)
        content = RecordDict({"arrays": arrays(received + 1), "site": name,
                              "metrics": MetricRecord({NUM_EXAMPLES: 1, "train_loss": 0.1, TRAIN_SECONDS: 5.0,
                                                       "train_steps": 1})})
        if message.content["config"].get(EVALUATE_RECEIVED):
            content[RECEIVED_METRICS] = score
        return Message(content, reply_to=message)

    reports, evaluated = [], []
    run_rounds(FedAvg(min_train_nodes=2, min_evaluate_nodes=2, min_available_nodes=2), ReplyingGrid([1, 2], respond),
               arrays(0.0), 1, 3, ConfigRecord(), ConfigRecord(), timeout_s=5, node_wait_s=1,
               on_round=lambda r, _: reports.append(r), on_evaluated=evaluated.append, fold_evaluation=True)
    assert [t for _, t in sent].count(MessageType.EVALUATE) == 2  # after the last round only, to both sites
    assert len(sent) == 2 * 3 + 2
    assert [r.server_round for r in evaluated] == [1, 2]
    for report in reports:  # round r's global model is r (each site adds 1); site n scores it r + n
        assert report.evaluate_metrics["dose_score"] == pytest.approx(report.server_round + (1 * 1 + 2 * 2) / 3)
        assert sorted(report.site_evaluate) == ["site-1", "site-2"]
    assert reports[0].folded_eval_s == {} and reports[1].folded_eval_s == {"site-1": 2.0, "site-2": 2.0}
    assert reports[1].required_train_s == 7.0 and reports[1].slowest_site_eval_s == 0.0
    assert reports[2].slowest_site_eval_s == 2.0  # its own evaluation step


def test_a_relay_never_folds_the_evaluation():
    """In a relay each site receives the previous site's model, not the global one: evaluation stays apart."""
    cyclic = build_strategy({"name": "cyclic"}, 2, 2, 2)
    assert not folds_evaluation(cyclic)
    assert folds_evaluation(build_strategy({"name": "fedavg"}, 2, 2, 2))
    assert not folds_evaluation(build_strategy({"name": "fedavg"}, 2, 2, 2, fraction_evaluate=0.5))
