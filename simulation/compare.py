"""The comparison of a scenario: the latest federated run of each strategy and the latest centralised and
local-only baselines, scored on the same validation cases, as a markdown table (also logged to MLflow).
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from models.tasks import task_class
from protocols.errors import ConfigError
from server.federation import scenario_name
from server.tracking import VALIDATION, Tracker, find_runs
from wire.records import NUM_EXAMPLES


@dataclass
class Row:
    """One model of the comparison."""

    model: str
    kind: str
    run_id: str
    cases: int
    minutes: float
    scores: dict[str, float]


def _row(run) -> Row:
    tags, metrics = run.data.tags, run.data.metrics
    kind = tags["fedrt.kind"]
    if kind == "federated":
        model = f"federated {tags.get('fedrt.strategy', '')}".strip()
        site_cases = f"/train/{NUM_EXAMPLES}"
        cases = sum(int(v) for k, v in metrics.items() if k.startswith("site/") and k.endswith(site_cases))
    else:
        model = f"{kind} {tags.get('fedrt.site', '')}".strip()
        cases = int(metrics.get("train/cases", 0))
    minutes = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 60000
    scores = {k.removeprefix(VALIDATION): v for k, v in metrics.items() if k.startswith(VALIDATION)}
    return Row(model, kind, run.info.run_id, cases, minutes, scores)


def comparison_rows(config: DictConfig) -> list[Row]:
    """The newest finished run per model of the config's scenario, federated first."""
    latest: dict[str, Row] = {}
    for run in find_runs(config.tracking.uri, config.tracking.experiment, scenario_name(config)):
        if run.data.tags.get("fedrt.kind") in ("federated", "centralized", "local"):
            row = _row(run)
            latest.setdefault(row.model, row)
    order = {"federated": 0, "centralized": 1, "local": 2}
    return sorted(latest.values(), key=lambda r: (order[r.kind], r.model))


def markdown_table(rows: list[Row], task: str) -> str:
    """Headline scores per model and the primary score relative to the centralised model."""
    kind = task_class(task)
    metrics, primary = kind.site_metrics, kind.primary_metric
    central = next((r.scores.get(primary) for r in rows if r.kind == "centralized"), None)
    head = ["model", "training cases", *metrics, f"{primary} / centralized", "wall minutes", "MLflow run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = f"{r.scores[primary] / central:.3f}" if central and primary in r.scores else "-"
        values = [f"{r.scores[m]:.4f}" if m in r.scores else "-" for m in metrics]
        lines.append("| " + " | ".join([r.model, str(r.cases), *values, ratio, f"{r.minutes:.1f}",
                                        r.run_id[:8]]) + " |")
    better = "higher" if kind.higher_is_better else "lower"
    lines.append(f"\n{primary}: {better} is better; every model scored on the same validation cases.")
    return "\n".join(lines) + "\n"


def compare(config: DictConfig) -> tuple[str, str]:
    """The scenario's table, logged as ``comparison.md`` with each model's scores in a comparison run."""
    rows = comparison_rows(config)
    if not rows:
        raise ConfigError(f"no finished runs of scenario {scenario_name(config)!r} in {config.tracking.uri}; "
                          f"run `fedrt simulate` and `fedrt baseline` with the same overrides first")
    table = markdown_table(rows, config.task.name)
    tags = {"fedrt.kind": "comparison", "fedrt.scenario": scenario_name(config), "fedrt.task": config.task.name}
    tracker = Tracker.start(config.tracking.uri, config.tracking.experiment, OmegaConf.to_container(config,
                            resolve=True), tags, run_name=f"comparison-{scenario_name(config)}")
    tracker.log_metrics({f"{r.model.replace(' ', '_')}/{k}": v for r in rows for k, v in r.scores.items()}, step=0)
    tracker.log_text(table, "comparison.md")
    tracker.finish()
    return table, tracker.run_id
