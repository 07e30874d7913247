"""Differential privacy on hand-made replies: updates are screened, clipped to the norm, averaged with equal
weights and noised with the calibrated std; the spent budget grows per round, survives a checkpoint and
stops a run at ``privacy.max_epsilon``.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from flwr.supercore.task_identity import TaskIdentity
from server_grid import ReplyingGrid

from server.rounds import run_rounds
from server.strategies import FedAdam, FedAvg
from server.strategies.privacy import PrivacySettings, PrivateStrategy, with_privacy
from wire.records import NUM_EXAMPLES

SHAPE = (200, 300)


@pytest.fixture(autouse=True)
def server_identity(monkeypatch):
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def weights(value: float, shape=(2, 3)) -> ArrayRecord:
    return ArrayRecord({"conv.weight": Array(np.full(shape, value, np.float32)),
                        "conv.bias": Array(np.full(2, value, np.float32))})


def private(clipping: str, noise: float, norm: float = 1.0, max_epsilon: float | None = None,
            nodes: int = 2, min_train: int | None = None) -> PrivateStrategy:
    section = {"clipping": clipping, "clipping_norm": norm, "noise_multiplier": noise, "target_delta": 1e-5,
               "max_epsilon": max_epsilon}
    strategy = with_privacy(FedAvg(min_train_nodes=min_train or nodes, min_available_nodes=nodes,
                                   min_evaluate_nodes=nodes, fraction_evaluate=0.0), section, population=nodes)
    assert isinstance(strategy, PrivateStrategy)
    return strategy


def site_updates(values: dict[int, float], shape=(2, 3), seen: list | None = None):
    """A ``respond`` for ReplyingGrid: node n sends the global weights plus ``values[n]`` everywhere."""

    def respond(node: int, message: Message) -> Message:
        if seen is not None:
            seen.append(dict(next(iter(message.content.config_records.values()))))
        content = RecordDict({"arrays": weights(values[node], shape), "site": ConfigRecord({"name": f"site-{node}"}),
                              "metrics": MetricRecord({NUM_EXAMPLES: 10 * node, "train_loss": 0.1,
                                                       "train_seconds": 0.1, "train_steps": 1})})
        return Message(content, reply_to=message)

    return respond


def one_round(strategy, respond, nodes=(1, 2), shape=(2, 3), first=1, last=1):
    reports = []
    final = run_rounds(strategy, ReplyingGrid(list(nodes), respond), weights(0.0, shape), first, last, ConfigRecord(),
                       ConfigRecord(), timeout_s=5, node_wait_s=1, on_round=lambda r, _: reports.append(r))
    return final, reports


def test_server_side_clipping_bounds_each_update_and_averages_sites_equally():
    # Site 1's update (3 in 8 weights, norm 8.49) is clipped to norm 1: 3 / 8.49 = 0.354 each; site 2's
    # (0.1 each, norm 0.28) is within the bound. Equal weights despite 10 vs 20 examples: (0.354 + 0.1) / 2.
    final, (report,) = one_round(private("server", noise=1e-6), site_updates({1: 3.0, 2: 0.1}))
    expected = (3.0 / np.sqrt(8 * 9.0) + 0.1) / 2
    for value in final.values():
        np.testing.assert_allclose(value.numpy(), expected, atol=1e-4)
        assert value.numpy().dtype == np.float32
    assert report.site_train["site-1"][NUM_EXAMPLES] == 10  # tracking still sees the real example counts
    assert report.privacy["privacy/releases"] == 1 and report.privacy["privacy/epsilon"] > 0


def test_client_side_clipping_sends_the_norm_and_the_noise_has_the_calibrated_std():
    seen: list[dict] = []
    strategy = private("client", noise=1.0, norm=2.0)
    final, (report,) = one_round(strategy, site_updates({1: 1e-3, 2: 1e-3}, SHAPE, seen), shape=SHAPE)
    assert all(config[KEY_CLIPPING_NORM] == 2.0 for config in seen)
    noise = final["conv.weight"].numpy() - 1e-3
    assert noise.std() == pytest.approx(1.0 * 2.0 / 2, rel=0.02)  # noise_multiplier * clipping_norm / sites
    assert report.privacy["privacy/noise_std"] == pytest.approx(1.0)


def test_a_nan_reply_is_rejected_before_clipping_and_the_noise_follows_the_sites_merged():
    strategy = private("server", noise=1.0, nodes=3, min_train=2)
    final, (report,) = one_round(strategy, site_updates({1: 1e-3, 2: np.nan, 3: 1e-3}, SHAPE), nodes=(1, 2, 3),
                                 shape=SHAPE)
    assert report.rejected == {"train/site-2": "array conv.weight: non-finite values"}
    assert sorted(report.site_train) == ["site-1", "site-3"]
    assert final["conv.weight"].numpy().std() == pytest.approx(1.0 / 2, rel=0.02)  # two updates averaged


def test_the_budget_grows_each_round_survives_a_checkpoint_and_stops_the_run_at_the_limit():
    strategy = private("server", noise=2.0)
    _, reports = one_round(strategy, site_updates({1: 1e-3, 2: 1e-3}), last=3)
    epsilons = [r.privacy["privacy/epsilon"] for r in reports]
    assert epsilons == sorted(epsilons) and len(set(epsilons)) == 3
    resumed = private("server", noise=2.0)
    resumed.load_privacy_state(strategy.privacy_state())
    assert resumed.privacy_metrics()["privacy/epsilon"] == pytest.approx(epsilons[-1])

    limited = private("server", noise=2.0, max_epsilon=(epsilons[0] + epsilons[1]) / 2)
    with pytest.raises(PrivacyBudgetExhausted, match=r"round 2 would spend more than privacy\.max_epsilon"):
        one_round(limited, site_updates({1: 1e-3, 2: 1e-3}), last=3)


def test_a_site_that_sends_the_global_model_back_is_rejected_not_divided_by_zero():
    _, (report,) = one_round(private("server", noise=1.0, min_train=1), site_updates({1: 0.0, 2: 1e-3}))
    assert report.rejected == {"train/site-1": "the update is zero: the site sent the global model back"}
    assert list(report.site_train) == ["site-2"]


def test_privacy_is_off_by_default_and_bad_settings_name_the_fix():
    plain = FedAvg(min_train_nodes=1, min_available_nodes=1)
    assert with_privacy(plain, {"clipping": None}, 1) is plain
    with pytest.raises(ValueError, match="choose client, server or null"):
        PrivacySettings.from_config({"clipping": "both", "clipping_norm": 1, "noise_multiplier": 1,
                                     "target_delta": 1e-5})
    with pytest.raises(ValueError, match="must be positive"):
        PrivacySettings.from_config({"clipping": "client", "clipping_norm": 0, "noise_multiplier": 1,
                                     "target_delta": 1e-5})
    with pytest.raises(ValueError, match="use strategy=fedavg or strategy=fedprox"):
        with_privacy(FedAdam(min_train_nodes=1, min_available_nodes=1),
                     {"clipping": "server", "clipping_norm": 1, "noise_multiplier": 1, "target_delta": 1e-5}, 1)

