"""Progress that shows what matters: `fedrt train` scores the validation patients every N minutes of training,
per organ for segmentation, on the console and (tracking.train) in MLflow, outside the training budget.
"""

from __future__ import annotations

import re
import time

from mlflow import MlflowClient

from fedrt import cli
from models import loop
from models.checkpoint import load_checkpoint
from models.config import TrainConfig
from models.tasks import make_task
from tests.test_models import SMALL


def test_periodic_validation_is_called_with_scores_and_kept_out_of_the_training_time(protocol, openkbp_root):
    from protocols.openkbp import load_openkbp_case

    cases = [load_openkbp_case(openkbp_root / "train-pats" / f"pt_{i}", protocol)[0] for i in (1, 2)]
    task = make_task("seg", protocol, SMALL)
    calls: list[tuple[int, float, dict[str, float]]] = []
    began = time.perf_counter()
    result = loop.train(task.build_network(), task, [task.prepare(cases[0])],
                        TrainConfig(epochs=3, steps_per_epoch=2, validate_every_min=1e-6), progress=False,
                        validation=cases[1:], on_validation=lambda *call: calls.append(call))
    wall = time.perf_counter() - began
    assert [step for step, _, _ in calls] == [0, 1, 2, 3, 4, 5]  # the interval is up before every step
    assert all("dice_mean" in scores and "dice_SpinalCord" in scores for _, _, scores in calls)
    assert result.validation_seconds > 0 and result.seconds + result.validation_seconds <= wall
    assert calls[-1][1] * 60 <= result.seconds  # the minutes reported are training minutes


def test_fedrt_train_prints_per_organ_dice_every_n_minutes_and_records_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli.main(["train", "task=seg", "preset=smoke", "train.epochs=2", "train.steps_per_epoch=2",
                     "train.validate_every_min=1e-6", "tracking.train=true", f"tracking.uri={uri}",
                     f"output={tmp_path / 'seg.pt'}"]) == 0
    out = capsys.readouterr().out
    lines = re.findall(r"\d\d:\d\d:\d\d [\d.]+ min, step (\d): dice_mean=[\d.]+, (.*)", out)
    assert [int(step) for step, _ in lines] == [0, 1, 2, 3], out
    assert all("dice_SpinalCord=" in rest and "hd95" not in rest for _, rest in lines), out
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fedrt").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["fedrt.kind"] == "centralized"
    assert run.data.tags["fedrt.precision"] == "fp32"  # the arithmetic it trained in, as the summary line says
    assert re.search(r"trained 4 steps on \d+ cases in \d+ s \(fp32\)", out), out
    assert load_checkpoint(tmp_path / "seg.pt").metadata["precision"] == "fp32"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/dice_mean")) == [0, 1, 2, 3, 4]
