"""The synthetic-CT task on simulated MR: SynthRAD's metrics agree with scikit-image's, the MR's body outline is the
patient's, the one training loop lowers the task's loss, and evaluation and predictions work as for any task.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from configs.compose import compose
from models import loop
from models.centralized import task_from_config, train_config
from models.tasks import task_class
from models.tasks.sct import SyntheticCTTask
from protocols.case import Case
from protocols.errors import DataError
from protocols.metrics import SCT_HU_RANGE, dice, sct_mae_hu, sct_psnr_db, sct_ssim
from protocols.openkbp import read_prediction
from protocols.phantom import generate_phantom, phantom_protocol
from protocols.simulated_mr import Scanner, simulate_mr

SHAPE = (64, 64, 64)


@pytest.fixture(scope="module")
def task() -> SyntheticCTTask:
    config = compose(["preset=smoke", "task=sct"])
    task = task_from_config(config)
    task.protocol = phantom_protocol(task.protocol, SHAPE)
    return task


@pytest.fixture(scope="module")
def cases(task) -> list[Case]:
    """Four phantoms, each with a simulated MR from one hospital's scanner."""
    scanner = Scanner.for_site(3)
    out = []
    for patient in range(1, 5):
        case = generate_phantom(task.protocol, 0, patient, SHAPE)
        case.mr = simulate_mr(case.ct_hu, case.spacing_mm, scanner, case.possible_dose_mask)
        out.append(case)
    return out


def test_sct_metrics_are_synthrads_and_agree_with_scikit_image():
    rng = np.random.default_rng(0)
    reference = rng.normal(0.0, 400.0, (20, 24, 22))
    synthetic = reference + rng.normal(0.0, 80.0, reference.shape)
    everywhere = np.ones(reference.shape, bool)
    shifted = [np.clip(image, *SCT_HU_RANGE) - SCT_HU_RANGE[0] for image in (reference, synthetic)]
    peak = SCT_HU_RANGE[1] - SCT_HU_RANGE[0]
    _, ssim_map = structural_similarity(*shifted, data_range=peak, full=True)
    assert sct_ssim(reference, synthetic, everywhere) == pytest.approx(ssim_map.mean(), rel=1e-9)
    assert sct_psnr_db(reference, synthetic, everywhere) == pytest.approx(
        peak_signal_noise_ratio(*shifted, data_range=peak), rel=1e-9)
    inside = np.zeros(reference.shape, bool)
    inside[5:15, 5:15, 5:15] = True
    synthetic[~inside] = 5000.0  # outside the body nothing counts
    expected = np.abs(np.clip(reference, *SCT_HU_RANGE) - np.clip(synthetic, *SCT_HU_RANGE))[inside].mean()
    assert sct_mae_hu(reference, synthetic, inside) == pytest.approx(expected)
    assert sct_ssim(reference, reference, inside) == pytest.approx(1.0)
    with pytest.raises(DataError, match="body mask is empty"):
        sct_mae_hu(reference, synthetic, np.zeros(reference.shape, bool))


def test_the_mr_body_outline_is_the_patients_with_dark_bone_and_air_passages_filled(cases):
    for case in cases:
        body = case.mr_body()
        assert dice(body, case.tissue_mask()) > 0.95
        enclosed = (case.ct_hu > 700) & (ndimage.distance_transform_edt(case.possible_dose_mask) > 2)
        assert body[enclosed].mean() > 0.99  # cortical bone gives no MR signal, yet lies inside
    with pytest.raises(DataError, match="has no MR"):
        dataclasses.replace(cases[0], mr=None).mr_body()


def test_the_sct_task_is_registered_and_maps_ct_to_its_target_and_back(cases):
    task = task_from_config(compose(["preset=smoke", "task=sct", "model.downsample=1"]))
    task.protocol = phantom_protocol(task.protocol, SHAPE)
    assert task_class("sct") is SyntheticCTTask and task.in_channels == 2
    case = cases[0]
    prepared = task.prepare(case)
    assert prepared.image.shape[0] == 2 and prepared.target.min() >= 0.0  # air 0, as the padding
    perfect = task.postprocess(prepared.target, case, prepared.crop)  # the target itself, on the native grid
    body = case.mr_body()
    assert sct_mae_hu(case.ct_hu, perfect, body) < 1.0  # CT_CLIP_HU's clipping of the densest bone only
    assert (perfect[~body] == -1000.0).all()


def test_the_one_loop_trains_the_sct_task_lowers_its_loss_and_scores_it(task, cases, tmp_path):
    config = dataclasses.replace(train_config(compose(["preset=smoke", "task=sct"])), epochs=8, steps_per_epoch=4,
                                 max_minutes=None)
    network = task.build_network()
    result = loop.train(network, task, [task.prepare(c) for c in cases[:3]], config, progress=False)
    assert result.history[-1] < 0.7 * result.history[0]
    scores = loop.evaluate(network, task, cases[3:])
    assert set(scores) == {"mae_hu", "psnr_db", "ssim"}
    assert 0.0 < scores["mae_hu"] < 1000.0 and scores["psnr_db"] > 10.0 and 0.0 < scores["ssim"] <= 1.0
    prediction = loop.predict(network, task, cases[3])
    path = task.write_prediction(cases[3], prediction, tmp_path)
    written = read_prediction(path, SHAPE) - 1000.0  # stored as an OpenKBP CT: HU + 1000
    np.testing.assert_allclose(written, np.round(prediction), atol=0.05)


@pytest.mark.slow
def test_sct_is_federated_baselined_and_compared_like_any_task(tmp_path, monkeypatch, protocol):
    """The sct task through Flower's simulation, the baselines and ``fedrt compare``, with no sct-specific code
    there: phantoms on the protocol grid with a simulated MR (one scanner), 2 virtual hospitals, 1 round.
    """
    from protocols.phantom import write_phantom_dataset
    from protocols.simulated_mr_dataset import write_simulated_mr_dataset
    from simulation.baselines import run_baselines
    from simulation.compare import compare
    from simulation.run import simulate

    write_phantom_dataset(tmp_path / "phantoms", protocol, 6, seed=5)
    write_simulated_mr_dataset(tmp_path / "phantoms", tmp_path / "paired", protocol, Scanner.for_site(2))
    monkeypatch.chdir(tmp_path)
    config = compose(["preset=smoke", "task=sct", f"data.root={tmp_path / 'paired'}", "data.max_cases=null",
                      "num_sites=2", "rounds=1", "federation.local_epochs=1", "train.steps_per_epoch=2",
                      f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"output={tmp_path / 'sct.pt'}"])
    outcome = simulate(config)
    assert set(outcome.federation.validation) >= {"mae_hu", "psnr_db", "ssim"}
    run_baselines(config, ("centralized",), progress=False)
    table, _ = compare(config)
    assert "mae_hu" in table and "| centralized all |" in table and "lower is better" in table
