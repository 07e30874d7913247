"""fedrt's ServerApp for a deployment (``server.deployed:app``): the SuperLink runs it for each submitted run,
composing the Hydra config from the overrides carried in the run config, and prints one summary line per round
(streamed to ``fedrt run``). ``write_app_definition`` writes the Flower app (a ``pyproject.toml`` naming this
ServerApp and ``client.forwarder:app``, or the simulation's apps) that ``fedrt run`` and ``fedrt simulate``
submit; it has no dependencies to install (offline sites).
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from omegaconf import DictConfig, OmegaConf

from configs.compose import compose
from protocols.errors import ConfigError, FedrtError
from server.federation import FederationOutcome, open_run, run_recorded
from server.journal import FAILED, FINISHED, JOURNAL_DIR, JournalEntry, RunJournal, absolute_uri
from server.rounds import RoundReport
from server.tracking import Tracker
from wire.records import NOT_SCORES

OVERRIDES_KEY = "overrides"  # run config: Hydra overrides, shell-quoted (``fedrt run``, ``flwr run --run-config``)
CONFIG_KEY = "config"  # run config: the whole composed config as JSON (``fedrt simulate``); wins over overrides
APP_NAME = "fedrt"
DEPLOYED_APPS = ("server.deployed:app", "client.forwarder:app")  # (ServerApp, ClientApp) a SuperLink runs for fedrt run
SERVER_LOG = "fedrt-server.log"  # the ServerApp's log in the SuperLink's state folder (its working folder)
SERVER_LOG_BYTES, SERVER_LOG_BACKUPS = 10 * 2**20, 5  # rotation: a new file at 10 MB, five old ones kept
SAID = logging.getLogger("server.output")  # the lines the ServerApp prints (``say``), for its log file


def app_definition(components: tuple[str, str], config: dict[str, str]) -> str:
    """The Flower app's ``pyproject.toml``: the installed fedrt's ServerApp and ClientApp, the run-config keys with
    their defaults, and no dependencies to install (sites may be offline).
    """
    lines = [f"{key} = {json.dumps(value)}" for key, value in config.items()]
    return "\n".join([
        "[project]", f'name = "{APP_NAME}"', 'version = "1.0.0"',
        'description = "fedrt federated training (the ServerApp and ClientApp of the installed fedrt)"',
        'license = "Apache-2.0"', "dependencies = []", "", "[tool.flwr.app]", 'publisher = "fedrt"', "",
        "[tool.flwr.app.components]", f'serverapp = "{components[0]}"', f'clientapp = "{components[1]}"', "",
        "[tool.flwr.app.config]", *lines, ""])


def write_app_definition(folder: Path, components: tuple[str, str] = DEPLOYED_APPS,
                         config: dict[str, str] | None = None) -> Path:
    """Write the Flower app definition (``pyproject.toml``) into ``folder`` and return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(app_definition(components, config or {OVERRIDES_KEY: ""}))
    return folder


def encode_overrides(overrides: list[str]) -> str:
    """The run-config value carrying the Hydra overrides: one shell-quoted string (Flower's run config holds
    scalars only), e.g. ``preset=smoke rounds=2``.
    """
    return shlex.join(overrides)


def encode_config(config: DictConfig) -> str:
    """The run-config value carrying a composed config (resolved, as JSON)."""
    return json.dumps(OmegaConf.to_container(config, resolve=True))


def decode_overrides(run_config: dict[str, Any]) -> list[str]:
    """The Hydra overrides from a run config; an error naming the expected form otherwise."""
    try:
        return shlex.split(str(run_config.get(OVERRIDES_KEY, "")))
    except ValueError as exc:
        raise ConfigError(f"run config {OVERRIDES_KEY!r} is not a list of key=value overrides ({exc}); give e.g. "
                          "overrides=\"preset=smoke rounds=2\"") from exc


def config_from_run(run_config: dict[str, Any]) -> DictConfig:
    """The run's composed config: the one carried whole, else composed from the carried overrides."""
    if run_config.get(CONFIG_KEY):
        return OmegaConf.create(json.loads(str(run_config[CONFIG_KEY])))
    return compose(decode_overrides(run_config))


def round_summary(report: RoundReport, rounds: int) -> str:
    """One line per finished round: loss, server and site scores, time, sites answering, rejections."""
    loss = report.train_metrics.get("train_loss", float("nan"))
    scores = report.server_metrics or report.evaluate_metrics
    shown = _scores(scores)
    rejected = f", rejected: {'; '.join(f'{k} ({v})' for k, v in report.rejected.items())}" if report.rejected else ""
    return (f"fedrt round {report.server_round}/{rounds}: train_loss={loss:.4f} {shown} ({report.seconds:.1f} s, "
            f"{len(report.site_train)} sites trained: {', '.join(sorted(report.site_train)) or 'none'}{rejected})")


def _scores(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k not in NOT_SCORES and not k.startswith("hd95"))


def evaluation_summary(report: RoundReport, rounds: int) -> str:
    """One line when the sites' scores of a round's model arrive with the next round's training."""
    rejected = "; ".join(f"{k} ({v})" for k, v in report.rejected.items() if k.startswith("evaluate/"))
    return (f"fedrt round {report.server_round}/{rounds} evaluated by {len(report.site_evaluate)} sites: "
            f"{_scores(report.evaluate_metrics) or 'no scores'}{f', rejected: {rejected}' if rejected else ''}")


def say(line: str) -> None:
    """Print ``line``, timestamped, to the ServerApp's output (streamed to ``fedrt run``), and log it to the
    server's log when the ServerApp keeps one.
    """
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", flush=True)
    SAID.info(line)


class RoundPrinter(Tracker):
    """A Tracker that also says each round's summary (``say``)."""

    def __init__(self, tracker: Tracker, rounds: int):
        super().__init__(tracker.client, tracker.run_id)
        self._rounds = rounds

    def log_round(self, report: RoundReport) -> None:
        """Record the round in MLflow, then say its summary."""
        super().log_round(report)
        say(round_summary(report, self._rounds))

    def log_evaluation(self, report: RoundReport) -> None:
        """Record the sites' scores of an earlier round's model (folded evaluation), then say them."""
        super().log_evaluation(report)
        say(evaluation_summary(report, self._rounds))


def _print_outcome(outcome: FederationOutcome) -> None:
    model = f", registered version {outcome.model_version}" if outcome.model_version else ""
    say(f"fedrt: finished rounds {outcome.first_round}..{outcome.rounds}; MLflow run {outcome.run_id}{model}; "
        f"model {outcome.checkpoint}")


def _log_file(path: Path) -> logging.Handler:
    handler = RotatingFileHandler(path, maxBytes=SERVER_LOG_BYTES, backupCount=SERVER_LOG_BACKUPS, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def serve(grid: Grid, config: DictConfig, tracker: Tracker, log_file: Path | None = None) -> FederationOutcome:
    """Run the federation of ``config`` on ``grid`` in ``tracker``'s MLflow run (both from ``open_run``),
    streaming progress and one summary per round to the output and, with ``log_file``, to that log (timestamped,
    rotated), warnings (rejected replies, lost sites) included.
    """
    progress = logging.StreamHandler(sys.stdout)
    progress.setFormatter(logging.Formatter("%(asctime)s fedrt %(levelname)s %(name)s: %(message)s"))
    progress.addFilter(lambda record: record.name != SAID.name)  # ``say`` prints those itself
    handlers = [progress, *([_log_file(log_file)] if log_file is not None else [])]
    logger = logging.getLogger("server")
    level = logger.level
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        say(f"fedrt: MLflow run {tracker.run_id} ({config.tracking.uri}); {config.rounds} rounds, "
            f"task {config.task.name}, strategy {config.strategy.name}")
        try:
            outcome = run_recorded(grid, config, RoundPrinter(tracker, int(config.rounds)))
        except FedrtError as error:
            say(f"fedrt: run stopped: {error}")
            say(f"fedrt: MLflow run {tracker.run_id} is marked FAILED; it resumes from its last round checkpoint "
                f"with `fedrt run resume={tracker.run_id}`")
            raise
        _print_outcome(outcome)
        return outcome
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation the submitted run config describes, journalled in the SuperLink's state folder (the
    ServerApp's working folder) so that a server restarted after a crash resumes it.
    """
    tracker, config = open_run(config_from_run(dict(context.run_config)))
    journal = RunJournal(Path.cwd() / JOURNAL_DIR)
    entry = journal.write(JournalEntry(context.run_id, tracker.run_id, absolute_uri(str(config.tracking.uri),
                                                                                   Path.cwd())))
    try:
        serve(grid, config, tracker, Path.cwd() / SERVER_LOG)
    except Exception:
        journal.mark(entry, FAILED)
        raise
    journal.mark(entry, FINISHED)
