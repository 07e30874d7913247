"""fedrt's ServerApp for a deployment (``server.deployed:app``): the SuperLink runs it for each submitted run,
composing the Hydra config from the overrides carried in the run config, and prints one summary line per round
(streamed to ``fedrt run``). ``write_app_definition`` writes the Flower app (a ``pyproject.toml`` naming this
ServerApp and ``client.app:app``) that ``fedrt run`` submits; it has no dependencies to install (offline sites).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from configs.compose import compose
from server.app import make_server_app
from server.federation import FederationOutcome, open_run
from server.rounds import RoundReport
from server.tracking import Tracker
from wire.records import NUM_EXAMPLES

OVERRIDES_KEY = "overrides"
APP_NAME = "fedrt"
APP_PYPROJECT = f'''[project]
name = "{APP_NAME}"
version = "1.0.0"
description = "fedrt federated training (the ServerApp and ClientApp of the installed fedrt)"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "fedrt"

[tool.flwr.app.components]
serverapp = "server.deployed:app"
clientapp = "client.app:app"

[tool.flwr.app.config]
{OVERRIDES_KEY} = "[]"
'''


def write_app_definition(folder: Path) -> Path:
    """Write the Flower app definition (``pyproject.toml``) into ``folder`` and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(APP_PYPROJECT)
    return folder


def encode_overrides(overrides: list[str]) -> str:
    """The run-config value carrying the Hydra overrides (a JSON list of strings)."""
    return json.dumps(list(overrides))


def decode_overrides(run_config: dict[str, Any]) -> list[str]:
    """The Hydra overrides from a run config; an error naming the expected form otherwise."""
    try:
        overrides = json.loads(str(run_config.get(OVERRIDES_KEY, "[]")))
    except json.JSONDecodeError as exc:
        raise ValueError(f"run config {OVERRIDES_KEY!r} is not JSON ({exc}); submit runs with `fedrt run`") from exc
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ValueError(f"run config {OVERRIDES_KEY!r} must be a JSON list of key=value strings")
    return overrides


def round_summary(report: RoundReport, rounds: int) -> str:
    """One line per finished round: loss, server and site scores, time, sites answering, rejections."""
    loss = report.train_metrics.get("train_loss", float("nan"))
    scores = report.server_metrics or report.evaluate_metrics
    shown = " ".join(f"{k}={v:.4f}" for k, v in scores.items() if k != NUM_EXAMPLES and not k.startswith("hd95"))
    rejected = f", rejected: {'; '.join(f'{k} ({v})' for k, v in report.rejected.items())}" if report.rejected else ""
    return (f"fedrt round {report.server_round}/{rounds}: train_loss={loss:.4f} {shown} ({report.seconds:.1f} s, "
            f"{len(report.site_train)} sites trained: {', '.join(sorted(report.site_train)) or 'none'}{rejected})")


class RoundPrinter:
    """A Tracker that also prints each round's summary to the ServerApp's output (streamed to ``fedrt run``)."""

    def __init__(self, tracker: Tracker, rounds: int):
        self._tracker, self._rounds = tracker, rounds

    def log_round(self, report: RoundReport) -> None:
        """Record the round in MLflow, then print its summary."""
        self._tracker.log_round(report)
        print(round_summary(report, self._rounds), flush=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tracker, name)


def _print_outcome(outcome: FederationOutcome) -> None:
    model = f", registered version {outcome.model_version}" if outcome.model_version else ""
    print(f"fedrt: finished rounds {outcome.first_round}..{outcome.rounds}; MLflow run {outcome.run_id}{model}; "
          f"model {outcome.checkpoint}", flush=True)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Compose the run's config from its overrides and run the federation, logging progress to the stream."""
    progress = logging.StreamHandler(sys.stdout)
    progress.setFormatter(logging.Formatter("fedrt %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("server")
    level = logger.level
    logger.addHandler(progress)
    logger.setLevel(logging.INFO)
    try:
        config = compose(decode_overrides(dict(context.run_config)))
        tracker, run_config = open_run(config)
        print(f"fedrt: MLflow run {tracker.run_id} ({run_config.tracking.uri}); {run_config.rounds} rounds, "
              f"task {run_config.task.name}, strategy {run_config.strategy.name}", flush=True)
        make_server_app(run_config, _print_outcome, RoundPrinter(tracker, int(run_config.rounds)))(grid, context)
    finally:
        logger.removeHandler(progress)
        logger.setLevel(level)
