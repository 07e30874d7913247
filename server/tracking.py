"""MLflow tracking, the only place fedrt writes to MLflow: one run per federated run (or baseline, or
comparison) with the composed config as params, per-round metrics, round checkpoints, and the registry.

The embedded default is ``sqlite:///mlflow.db`` in the working directory (browse it with
``mlflow ui --backend-store-uri sqlite:///mlflow.db``); any tracking URI works.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # hospitals run offline; nothing phones home
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException

from protocols.errors import ConfigError
from server.rounds import RoundReport

# MLflow's SQLite store trips SQLAlchemy deprecations that only MLflow can fix: not the user's concern.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow(\.|$)")

CONFIG_ARTIFACT = "config.json"
CHECKPOINTS = "checkpoints"
MODEL_ARTIFACT = "model"
CHECKPOINT_FILE = "checkpoint.pt"
VALIDATION = "val/"  # key prefix of scores on the validation patients: server-side, centralised and baselines
_ROUND_DIR = re.compile(r"round-(\d+)$")
_BATCH = 100


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys to strings (lists as JSON): the composed config as MLflow params."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


def validation_metrics(scores: dict[str, float]) -> dict[str, float]:
    """Scores on the validation patients under their MLflow keys (``VALIDATION``)."""
    return {f"{VALIDATION}{k}": v for k, v in scores.items()}


def _evaluation_metrics(report: RoundReport) -> dict[str, float]:
    """The sites' scores of a round's global model, aggregated and per site."""
    metrics = {f"local_val/{k}": v for k, v in report.evaluate_metrics.items()}
    for site, values in report.site_evaluate.items():
        metrics |= {f"site/{site}/local_val/{k}": v for k, v in values.items()}
    return metrics


def model_name(protocol: str, task: str) -> str:
    """The registry name of a protocol's federated model for a task."""
    return f"fedrt-{protocol}-{task}"


@dataclass
class ModelVersionInfo:
    """One registered model version as ``fedrt models list`` shows it."""

    name: str
    version: str
    aliases: list[str]
    run_id: str
    tags: dict[str, str]


class Tracker:
    """One MLflow run, written through an explicit client (thread-safe: the ServerApp runs in a thread)."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(cls, uri: str, experiment: str, config: dict[str, Any], tags: dict[str, str],
              run_name: str | None = None) -> Tracker:
        """A new run holding the config as params (and as ``config.json`` for resuming)."""
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
        tracker = cls(client, run.info.run_id)
        params = [Param(k[:250], v[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), _BATCH):
            client.log_batch(tracker.run_id, params=params[i:i + _BATCH])
        client.log_text(tracker.run_id, json.dumps(config, indent=2), CONFIG_ARTIFACT)
        return tracker

    @classmethod
    def reopen(cls, uri: str, run_id: str, kind: str) -> tuple[Tracker, dict[str, Any]]:
        """An unfinished run of ``kind``, marked running again, with the config it was started with."""
        client = MlflowClient(tracking_uri=uri)
        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            raise ConfigError(f"no MLflow run {run_id} in {uri}: give resume=<run id> and the tracking.uri "
                              f"it was recorded in") from exc
        if run.data.tags.get("fedrt.kind") != kind:
            raise ConfigError(f"MLflow run {run_id} is not a {kind} run of fedrt; give the id of an interrupted one")
        if run.info.status == "FINISHED":
            raise ConfigError(f"MLflow run {run_id} finished all its rounds; there is nothing to resume")
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
            config = json.loads(Path(path).read_text())
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return cls(client, run_id), config

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tag the run with what is known only once work has run (e.g. the arithmetic training used)."""
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at ``step`` (the round, or the epochs of a baseline) in batches."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(batch), _BATCH):
            self.client.log_batch(self.run_id, metrics=batch[i:i + _BATCH])

    def log_evaluation(self, report: RoundReport) -> None:
        """The sites' scores of the round's global model, when they come after the round (folded evaluation)."""
        self.log_metrics(_evaluation_metrics(report), report.server_round)
        self._log_rejections(report)

    def log_round(self, report: RoundReport) -> None:
        """Aggregated and per-site metrics, wall time, framework overhead and bytes of one round."""
        metrics = {f"train/{k}": v for k, v in report.train_metrics.items()}
        metrics |= _evaluation_metrics(report)
        metrics |= validation_metrics(report.server_metrics)
        for site, values in report.site_train.items():
            metrics |= {f"site/{site}/train/{k}": v for k, v in values.items()}
        metrics |= report.privacy
        train_overhead_s = max(report.train_phase_s - report.required_train_s, 0.0)
        metrics |= {
            "round/seconds": report.seconds,
            "round/train_phase_s": report.train_phase_s,
            "round/slowest_site_train_s": report.slowest_site_train_s,
            "round/site_train_total_s": report.site_train_total_s,
            "round/slowest_site_eval_s": report.slowest_site_eval_s,
            "round/server_eval_s": report.server_eval_s,
            "round/train_overhead_s": train_overhead_s,
            "round/train_overhead_fraction": train_overhead_s / report.train_phase_s if report.train_phase_s else 0.0,
            "round/overhead_s": report.overhead_s,
            "round/overhead_fraction": report.overhead_s / report.seconds if report.seconds else 0.0,
            "round/bytes_sent": report.bytes_sent,
            "round/bytes_received": report.bytes_received,
            "round/sites_accepted": len(report.site_train),
            "round/replies_rejected": len(report.rejected),
        }
        self.log_metrics(metrics, report.server_round)
        self._log_rejections(report)

    def _log_rejections(self, report: RoundReport) -> None:
        """The round's rejected replies and why, as an artifact (rewritten when a folded evaluation adds some)."""
        if report.rejected:
            lines = [f"{where}: {reason}" for where, reason in sorted(report.rejected.items())]
            self.log_text("\n".join(lines) + "\n", f"rejections/round-{report.server_round:04d}.txt")

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as an artifact file of the run."""
        self.client.log_text(self.run_id, text, artifact_file)

    def log_checkpoint(self, path: Path, server_round: int) -> None:
        """Store the global checkpoint of a round as ``checkpoints/round-NNNN/checkpoint.pt``."""
        self.client.log_artifact(self.run_id, str(path), f"{CHECKPOINTS}/round-{server_round:04d}")

    def latest_checkpoint(self, dst: Path) -> tuple[int, Path] | None:
        """The last round checkpoint of the run, downloaded under ``dst``; None before the first round."""
        rounds = [int(m.group(1)) for a in self.client.list_artifacts(self.run_id, CHECKPOINTS)
                  if (m := _ROUND_DIR.search(a.path))]
        if not rounds:
            return None
        last = max(rounds)
        path = self.client.download_artifacts(self.run_id, f"{CHECKPOINTS}/round-{last:04d}/{CHECKPOINT_FILE}",
                                              str(dst))
        return last, Path(path)

    def register_model(self, checkpoint: Path, name: str, tags: dict[str, str]) -> str:
        """Log the final checkpoint as the run's model and register it as a new version of ``name``."""
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / CHECKPOINT_FILE
            shutil.copyfile(checkpoint, staged)
            self.client.log_artifact(self.run_id, str(staged), MODEL_ARTIFACT)
        try:
            self.client.create_registered_model(name, tags={k: tags[k] for k in ("protocol", "task") if k in tags})
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        artifact_uri = self.client.get_run(self.run_id).info.artifact_uri
        version = self.client.create_model_version(name, source=f"{artifact_uri}/{MODEL_ARTIFACT}",
                                                   run_id=self.run_id, tags=tags)
        return str(version.version)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run as FINISHED, or FAILED (a federated run can then be resumed)."""
        self.client.set_terminated(self.run_id, status=status)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        """End the run as FINISHED, or FAILED when the block raised (an interruption too)."""
        self.finish("FINISHED" if exc_type is None else "FAILED")


def find_runs(uri: str, experiment: str, scenario: str) -> list:
    """The finished runs of a scenario (federated, baselines), newest first."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id],
                              filter_string=f"tags.`fedrt.scenario` = '{scenario}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"])


def list_models(uri: str) -> list[ModelVersionInfo]:
    """Every version of every registered model, newest version first within a model."""
    client = MlflowClient(tracking_uri=uri)
    out = []
    for model in client.search_registered_models(order_by=["name ASC"]):
        aliases = dict(model.aliases or {})
        versions = client.search_model_versions(f"name = '{model.name}'")
        for v in sorted(versions, key=lambda v: -int(v.version)):
            names = sorted(a for a, number in aliases.items() if str(number) == str(v.version))
            out.append(ModelVersionInfo(v.name, str(v.version), names, v.run_id or "", dict(v.tags)))
    return out


def promote(uri: str, name: str, version: str, alias: str) -> None:
    """Point ``alias`` (e.g. ``production``) of a registered model at a version."""
    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        raise ConfigError(f"no version {version} of registered model {name!r} in {uri}; "
                          f"see `fedrt models list`") from exc
    client.set_registered_model_alias(name, alias, version)
