"""What every fedrt strategy adds to Flower's: screen replies before merging, keep the global dtypes,
and expose the server optimiser state so a round checkpoint can resume it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from protocols.errors import ConfigError
from server.validation import Screened, screen_replies

Exchange = Callable[[list[Message]], list[Message]]  # sends messages, returns the replies that came back


def cast_like(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """The arrays in the reference's key order and dtypes (server optimisers compute in float64)."""
    return ArrayRecord({key: Array(np.ascontiguousarray(arrays[key].numpy(), dtype=np.dtype(ref.dtype)))
                        for key, ref in reference.items()})


class ScreenedStrategy:
    """Mixin placed before a Flower strategy class: validated replies in, global dtypes out.

    ``screened`` holds the last round's accepted and rejected replies per phase (``train``, ``evaluate``)
    for tracking.
    """

    sequential = False  # True: a round's sites train one after another (``send_train`` relays the model)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.global_arrays: ArrayRecord | None = None
        self.screened: dict[str, Screened] = {}

    def send_train(self, server_round: int, messages: list[Message], exchange: Exchange) -> list[Message]:
        """Deliver the round's train instructions: to all sites at once."""
        return exchange(messages)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Remember the global model sent out: replies are checked and cast against it."""
        self.global_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Merge the accepted replies with the parent strategy; rejected ones are logged and left out."""
        if self.global_arrays is None:
            raise RuntimeError("aggregate_train called before configure_train: no global model to check against")
        self.screened["train"] = screen_replies(replies, self.global_arrays, "train", server_round)
        arrays, metrics = super().aggregate_train(server_round, self.screened["train"].accepted)
        return (None if arrays is None else cast_like(arrays, self.global_arrays)), metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Average the accepted sites' metrics (weighted by their validation cases)."""
        self.screened["evaluate"] = screen_replies(replies, None, "evaluate", server_round)
        return super().aggregate_evaluate(server_round, self.screened["evaluate"].accepted)

    def optimizer_state(self) -> dict[str, dict[str, np.ndarray]]:
        """Server optimiser state to checkpoint; none for strategies that only average."""
        return {}

    def privacy_metrics(self) -> dict[str, float]:
        """Privacy budget spent so far; none without differential privacy (``server.strategies.privacy``)."""
        return {}

    def load_optimizer_state(self, state: dict[str, dict[str, np.ndarray]]) -> None:
        """Restore a checkpointed optimiser state; a state this strategy cannot hold is an error."""
        if state:
            raise ConfigError(f"{type(self).__name__} keeps no optimiser state, but the checkpoint has {sorted(state)}")
