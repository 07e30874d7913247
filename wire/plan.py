"""The training plan the server sends to every site each round (the ``wire.records.PLAN`` entry of the
ConfigRecord): task, protocol, network, loop settings and the patient selection rule. The site's data location
never travels; it is the node's own.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from flwr.app import ConfigRecord

from models.checkpoint import protocol_to_dict
from models.config import ModelConfig, TrainConfig, from_mapping
from models.loop import learning_rate
from models.tasks import Task, make_task
from protocols.errors import DeploymentError
from protocols.protocol import Protocol, protocol_from_dict
from protocols.splits import DataConfig
from wire.records import PLAN


@dataclass(frozen=True)
class SitePlan:
    """How a site trains and evaluates this run; ``train.epochs`` is the local epochs of one round, and
    ``train.schedule`` runs over the run's ``rounds`` (see ``round_settings``). ``keep_optimizer``: the site
    continues its AdamW moments from its previous round (they stay on the node) instead of restarting them.
    """

    task: Task
    train: TrainConfig
    policy: str
    selection: DataConfig  # the run's patient selection (splits, max_cases), applied to the node's own data
    rounds: int
    keep_optimizer: bool
    encoded: str

    def round_settings(self, server_round: int) -> TrainConfig:
        """The loop settings of one round: the learning rate the run's schedule gives that round, held constant
        through the round. A schedule restarted in every round would spend the end of each round at almost no
        learning rate, which leaves the averaged model far behind centralised training of the same epochs.
        Settings of a whole training run (``average_from``: the mean of the run's last steps' weights;
        ``validate_every_min``) do not apply to a round, which is a slice of the run: they are cleared.
        """
        progress = min(max(server_round - 1, 0) / max(self.rounds, 1), 1.0)
        return dataclasses.replace(self.train, lr=learning_rate(self.train, progress), schedule="constant",
                                   average_from=None, validate_every_min=None)

    @property
    def data_key(self) -> str:
        """What the site's prepared data depends on (task, protocol, network grid, splits), for caching."""
        plan = json.loads(self.encoded)
        return json.dumps({k: plan[k] for k in ("task", "protocol", "model", "policy", "split")}, sort_keys=True)


def encode_plan(task_name: str, protocol: Protocol, model: ModelConfig, train: TrainConfig, policy: str,
                data: DataConfig, rounds: int, keep_optimizer: bool = False) -> str:
    """The plan as JSON. ``protocol`` is the one the sites' data is read with (its grid included)."""
    return json.dumps({
        "task": task_name,
        "protocol": protocol_to_dict(protocol),
        "model": dataclasses.asdict(model),
        "train": {k: v for k, v in dataclasses.asdict(train).items() if k != "extra"},
        "policy": policy,
        "rounds": int(rounds),
        "keep_optimizer": bool(keep_optimizer),
        "split": data.selection(),
    })


def decode_plan(config: ConfigRecord) -> SitePlan:
    """The plan inside a received ConfigRecord; a message without one is an error naming the fix."""
    if PLAN not in config:
        raise DeploymentError(f"the server sent no {PLAN!r} in its ConfigRecord; is it a fedrt ServerApp?")
    encoded = str(config[PLAN])
    plan = json.loads(encoded)
    protocol = protocol_from_dict(plan["protocol"], source="the server's training plan")
    task = make_task(plan["task"], protocol, from_mapping(ModelConfig, plan["model"]))
    return SitePlan(task, from_mapping(TrainConfig, plan["train"]), plan["policy"],
                    DataConfig.from_mapping(plan["split"]), int(plan["rounds"]), bool(plan["keep_optimizer"]), encoded)
