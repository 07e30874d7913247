"""Central differential privacy on the sites' updates: Flower's fixed-clipping DP wrappers around a fedrt
strategy, the budget spent tracked by Flower's RDP accountant and checkpointed so a resumed run keeps counting.

Replies are screened before anything is clipped (a wrongly shaped update cannot even be clipped), and under DP
the updates are averaged with equal weights: the Gaussian noise (std ``noise_multiplier * clipping_norm / n``)
is calibrated to the sensitivity ``clipping_norm / n`` of an unweighted mean of n clipped updates, which a
``num-examples`` weighting would exceed for the largest hospital.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import GaussianPrivacyEvent, Grid, PrivacyConfig
from flwr.serverapp.exception import PrivacyBudgetExhausted
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flwr.serverapp.strategy import FedAdam as FlowerFedAdam
from flwr.supercore.differential_privacy import compute_stdv
from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from protocols.errors import ConfigError
from server.strategies.screening import ScreenedStrategy
from server.validation import screen_replies
from wire.records import NUM_EXAMPLES
from wire.sites import reply_site_name

log = logging.getLogger(__name__)

WRAPPERS = {"client": DifferentialPrivacyClientSideFixedClipping, "server": DifferentialPrivacyServerSideFixedClipping}


@dataclass(frozen=True)
class PrivacySettings:
    """The ``privacy`` config section: who clips, the clipping norm, the noise and the budget limits."""

    clipping: str
    clipping_norm: float
    noise_multiplier: float
    target_delta: float
    max_epsilon: float | None = None

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> PrivacySettings | None:
        """The settings of ``privacy.*``; None when ``privacy.clipping`` is null (DP off)."""
        if not section or section.get("clipping") in (None, "null", "none", "off"):
            return None
        settings = cls(str(section["clipping"]), float(section["clipping_norm"]), float(section["noise_multiplier"]),
                       float(section["target_delta"]),
                       None if section.get("max_epsilon") is None else float(section["max_epsilon"]))
        if settings.clipping not in WRAPPERS:
            raise ConfigError(f"privacy.clipping={settings.clipping!r}: choose client, server or null (off)")
        if settings.clipping_norm <= 0 or settings.noise_multiplier <= 0:
            raise ConfigError("privacy.clipping_norm and privacy.noise_multiplier must be positive "
                              f"(got {settings.clipping_norm} and {settings.noise_multiplier})")
        if not 0 < settings.target_delta < 1:
            raise ConfigError(f"privacy.target_delta={settings.target_delta} must lie strictly between 0 and 1")
        return settings


def _unchanged(reply: Message, reference: ArrayRecord) -> bool:
    arrays = next(iter(reply.content.array_records.values()))
    return all(np.array_equal(arrays[k].numpy(), ref.numpy()) for k, ref in reference.items())


@contextlib.contextmanager
def _equal_weights(replies: list[Message]) -> Iterator[None]:
    """Give every reply the weight 1 while it is merged, then restore its ``num-examples`` for tracking."""
    records = [next(iter(r.content.metric_records.values())) for r in replies]
    weights = [record[NUM_EXAMPLES] for record in records]
    for record in records:
        record[NUM_EXAMPLES] = 1
    try:
        yield
    finally:
        for record, weight in zip(records, weights, strict=True):
            record[NUM_EXAMPLES] = weight


class PrivateStrategy:
    """A fedrt strategy behind Flower's fixed-clipping DP wrapper; everything else is the inner strategy's."""

    def __init__(self, strategy: ScreenedStrategy, settings: PrivacySettings, population: int):
        if isinstance(strategy, FlowerFedAdam):
            raise ConfigError("differential privacy noises the mean update; FedAdam's server optimiser would "
                              "reshape that noise: use strategy=fedavg or strategy=fedprox with privacy")
        if strategy.sequential:
            raise ConfigError("privacy.clipping bounds and noises the mean of the sites' updates, but strategy=cyclic "
                              "passes one site's model to the next; use strategy=fedavg or strategy=fedprox with "
                              "differential privacy, or privacy.clipping=null")
        self.strategy = strategy
        self.settings = settings
        self.population = max(int(population), 1)
        self.dp = WRAPPERS[settings.clipping](strategy, settings.noise_multiplier, settings.clipping_norm,
                                              max(int(strategy.min_train_nodes), 1))
        self.accountant = RdpAccountant(PrivacyConfig(
            target_delta=settings.target_delta, population_size=self.population,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION, max_epsilon=settings.max_epsilon))
        self.noise_std = 0.0
        self._event: GaussianPrivacyEvent | None = None

    def __getattr__(self, name: str) -> Any:
        """Node counts, screening records, optimiser state and evaluation come from the inner strategy."""
        return getattr(self.__dict__["strategy"], name)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The inner strategy's instructions (with the clipping norm for client-side clipping); refuses a round
        that would spend more than ``privacy.max_epsilon``.
        """
        messages = list(self.dp.configure_train(server_round, arrays, config, grid))
        self._event = None
        if messages:
            self._event = GaussianPrivacyEvent(self.settings.noise_multiplier, min(len(messages), self.population),
                                               self.population)
            if self.settings.max_epsilon is not None and self.accountant.would_exceed(self._event):
                spent = self.accountant.get_privacy_spent()
                raise PrivacyBudgetExhausted(
                    f"round {server_round} would spend more than privacy.max_epsilon={self.settings.max_epsilon} "
                    f"(spent so far: epsilon {spent.epsilon:.4g} at delta {spent.delta:g}); the run stops here")
        return messages

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen, then clip (server-side) and average with equal weights, then add the calibrated noise."""
        screened = screen_replies(replies, self.strategy.global_arrays, "train", server_round)
        for reply in list(screened.accepted):
            if _unchanged(reply, self.strategy.global_arrays):  # Flower's clipping divides by the update's norm
                name = reply_site_name(reply)
                screened.accepted.remove(reply)
                screened.rejected[name] = "the update is zero: the site sent the global model back"
                log.warning("round %d train: rejected the reply of %s: its update is zero", server_round, name)
        if not screened.accepted:
            self.strategy.screened["train"] = screened
            return None, None
        self.dp.num_sampled_clients = len(screened.accepted)
        with _equal_weights(screened.accepted):
            arrays, metrics = self.dp.aggregate_train(server_round, screened.accepted)
        self.strategy.screened["train"].rejected.update(screened.rejected)
        if arrays is not None and self._event is not None:
            self.accountant.compose(self._event)
            self.noise_std = compute_stdv(self.settings.noise_multiplier, self.settings.clipping_norm,
                                          len(screened.accepted))
        return arrays, metrics

    def privacy_metrics(self) -> dict[str, float]:
        """Budget spent so far (epsilon at the target delta) and this round's noise, for tracking."""
        if not self.accountant.num_releases:
            return {}
        spent = self.accountant.get_privacy_spent()
        return {"privacy/epsilon": spent.epsilon, "privacy/delta": spent.delta,
                "privacy/releases": float(spent.num_releases), "privacy/noise_std": self.noise_std}

    def privacy_state(self) -> str:
        """The accountant's state as JSON, stored in every round checkpoint."""
        return json.dumps(self.accountant.state_dict())

    def load_privacy_state(self, state: str) -> None:
        """Continue accounting from a round checkpoint's state."""
        self.accountant.load_state_dict(json.loads(state))


def with_privacy(strategy: ScreenedStrategy, section: Mapping[str, Any] | None,
                 population: int) -> ScreenedStrategy | PrivateStrategy:
    """``strategy`` behind the DP wrapper that ``privacy.*`` asks for, or unchanged when DP is off."""
    settings = PrivacySettings.from_config(section)
    if settings is None:
        return strategy
    log.info("differential privacy: %s-side clipping at %g, noise multiplier %g", settings.clipping,
             settings.clipping_norm, settings.noise_multiplier)
    return PrivateStrategy(strategy, settings, population)
