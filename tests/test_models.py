"""The networks and the one loop: encoding, flips, weight round trip, checkpoints, a short run lowers the loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from configs.compose import compose
from models import encoding, loop
from models.augment import RandLateralFlipd, class_indices, dataset_class_ratios, training_transform
from models.checkpoint import load_checkpoint, save_checkpoint
from models.config import ModelConfig, TrainConfig
from models.tasks import make_task
from models.weights import WeightAverage, set_weights
from protocols.openkbp import load_openkbp_case

SMALL = ModelConfig(channels=(4, 8, 16), strides=(2, 2), res_units=0, downsample=2, patch=(32, 32, 32))


@pytest.fixture(scope="module")
def cases(openkbp_root, protocol):
    return [load_openkbp_case(openkbp_root / "train-pats" / f"pt_{i}", protocol)[0] for i in (1, 2)]


def sent_weights(network: torch.nn.Module) -> list[np.ndarray]:
    """The weights as a site sends them: its state dict in an ``ArrayRecord``, as numpy arrays."""
    return ArrayRecord(network.state_dict()).to_numpy_ndarrays()


def test_dose_inputs_encode_targets_by_prescription(cases, protocol):
    case = cases[0]
    image = encoding.dose_inputs(case, protocol)
    assert image.shape == (3 + len(protocol.oars), *case.shape)
    targets = image[1 + len(protocol.oars)]
    assert targets[case.structures["PTV70"]].max() == pytest.approx(1.0)
    only56 = case.structures["PTV56"] & ~case.structures["PTV63"] & ~case.structures["PTV70"]
    assert np.allclose(targets[only56], 56 / 70)


def test_lateral_flip_swaps_left_and_right_parotid_channels(cases, protocol):
    task = make_task("seg", protocol, SMALL)
    prep = task.prepare(cases[0])
    flip = RandLateralFlipd(task.permutations(), prob=1.0)
    out = flip({"image": prep.image, "target": prep.target, "mask": prep.mask})
    left, right = protocol.oars.index("LeftParotid"), protocol.oars.index("RightParotid")
    torch.testing.assert_close(out["target"][left], torch.flip(prep.target[right], dims=(1,)))
    torch.testing.assert_close(out["target"][right], torch.flip(prep.target[left], dims=(1,)))
    # After the flip the channel called "LeftParotid" still lies on the patient's left (larger axis 1).
    left_centre = torch.nonzero(out["target"][left]).float().mean(0)[1]
    right_centre = torch.nonzero(out["target"][right]).float().mean(0)[1]
    assert left_centre > right_centre


def test_an_organ_contoured_in_few_cases_is_a_patch_centre_as_often_as_a_common_one():
    """Organ 0 is in all four cases, organ 1 in one: that case centres 8 of 11 patches on organ 1."""
    common, rare = torch.zeros(2, 16, 16, 16), torch.zeros(2, 16, 16, 16)
    common[0, :3, :3, :3] = 1
    rare[0, :3, :3, :3] = 1
    rare[1, -3:, -3:, -3:] = 1
    indices = [class_indices(rare), *(class_indices(common) for _ in range(3))]
    ratios = dataset_class_ratios(indices)
    assert ratios == [1.0, 2.0, 8.0]
    transform = training_transform((4, 4, 4), {"image": [0], "target": [0, 1], "mask": [0]}, False, 0.0, 0, ratios)
    item = {"image": torch.zeros(1, 16, 16, 16), "target": rare, "mask": rare[:1], "fg": rare[:1],
            "class_idx": indices[0]}
    crops = [transform(item)[0]["target"] for _ in range(400)]
    share = np.mean([float(c[1].any() and not c[0].any()) for c in crops])
    assert 0.65 < share < 0.8, share


def test_an_organ_contoured_in_fewer_cases_weighs_more_in_proportion():
    labelled = [torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])]
    torch.testing.assert_close(loop.organ_weights(labelled), torch.tensor([1.0, 1.5, 0.0]))


def test_balanced_seg_loss_is_the_organ_weighted_mean_of_the_per_organ_terms(protocol):
    """Weights in ``labelled`` scale each organ's Dice and BCE; an organ with weight 0 adds nothing."""
    task = make_task("seg", protocol, SMALL)
    organs = len(protocol.oars)
    torch.manual_seed(0)
    output, target = torch.randn(1, organs, 8, 8, 8), (torch.rand(1, organs, 8, 8, 8) > 0.7).float()

    def loss(weights: list[float]) -> float:
        return float(task.loss(output, {"target": target, "labelled": torch.tensor([weights])}))

    alone = [loss([1.0 if i == organ else 0.0 for i in range(organs)]) for organ in range(organs)]
    weights = [1.0 + i for i in range(organs)]
    assert loss(weights) == pytest.approx(float(np.dot(weights, alone) / sum(weights)), rel=1e-5)
    assert loss([1.0] * organs) == pytest.approx(float(np.mean(alone)), rel=1e-5)


def test_training_with_balance_organs_hands_the_loss_the_organ_weights(cases, protocol, monkeypatch):
    task = make_task("seg", protocol, SMALL)
    prepared = [task.prepare(c) for c in cases]
    prepared[0].labelled[0] = 0.0  # organ 0 contoured in one of the two cases: it weighs 2
    seen: list[torch.Tensor] = []
    original = task.loss
    monkeypatch.setattr(task, "loss", lambda output, batch: seen.append(batch["labelled"]) or original(output, batch))
    for balance in (False, True):
        loop.train(task.build_network(), task, prepared, TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2,
                                                                     balance_organs=balance), progress=False)
    plain, balanced = seen
    expected = loop.organ_weights([p.labelled for p in prepared])
    assert expected[0] == 2.0
    torch.testing.assert_close(balanced, plain * expected)


def test_weights_round_trip_exactly_including_buffers(protocol):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))
    net(torch.randn(2, 1, 5, 5, 5))  # updates BatchNorm running statistics (buffers)
    weights = sent_weights(net)
    assert len(weights) == len(net.state_dict()) == 7
    other = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))
    set_weights(other, weights)
    for a, b in zip(sent_weights(other), weights, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="expected shape"):
        set_weights(other, [w[..., :1] if w.ndim == 5 else w for w in weights])
    with pytest.raises(ValueError, match="weight arrays"):
        set_weights(other, weights[:-1])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_short_training_lowers_the_loss_for_both_tasks(cases, protocol, precision):
    for name in ("dose", "seg"):
        task = make_task(name, protocol, SMALL)
        torch.manual_seed(0)
        net = task.build_network()
        prepared = [task.prepare(c) for c in cases]
        result = loop.train(net, task, prepared, TrainConfig(epochs=8, steps_per_epoch=4, batch_size=2, lr=0.01,
                                                             flip=False, precision=precision), progress=False)
        assert result.steps == 32 and result.num_examples == 2 and result.precision == precision
        assert result.history[-1] < result.history[0], (name, result.history)
        # Trained in channels-last layout, handed back in the standard one (weights go out as plain arrays).
        assert all(p.is_contiguous() for p in net.parameters())
        assert all(w.dtype == np.float32 for w in sent_weights(net))


def test_weight_average_is_the_mean_of_the_parameters_and_keeps_the_last_buffers():
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))
    average, states = WeightAverage(), []
    for i in range(3):
        with torch.no_grad():
            for p in network.parameters():
                p.fill_(float(i))  # parameters 0, 1, 2: their mean is 1
        network(torch.randn(2, 1, 5, 5, 5))  # training mode: moves BatchNorm's running statistics
        average.update(network)
        states.append({k: v.clone() for k, v in network.state_dict().items()})
    average.apply(network)
    assert average.count == 3
    assert all(torch.equal(p, torch.ones_like(p)) for p in network.parameters())
    last = states[-1]
    for key, buffer in network.named_buffers():
        assert torch.equal(buffer, last[key]), key  # running mean/var and num_batches_tracked (3) are the last's
    assert int(network[1].num_batches_tracked) == 3


def test_training_averages_the_weights_of_the_last_steps(cases, protocol):
    task = make_task("dose", protocol, SMALL)
    prepared = [task.prepare(cases[0])]
    for average_from, averaged in ((0.5, 2), (0.75, 1)):
        torch.manual_seed(0)
        network = task.build_network()
        result = loop.train(network, task, prepared, TrainConfig(epochs=1, steps_per_epoch=4, lr=0.01,
                                                                 average_from=average_from), progress=False)
        assert result.averaged_steps == averaged
        same = all(torch.equal(v, result.last_weights[k]) for k, v in network.state_dict().items())
        assert same == (averaged == 1)  # the mean of one step's weights is that step's weights


def test_an_unknown_precision_is_refused_by_name(cases, protocol):
    task = make_task("dose", protocol, SMALL)
    with pytest.raises(ValueError, match=r"unknown train\.precision 'fp16'; choose fp32, bf16, auto"):
        loop.train(task.build_network(), task, [task.prepare(cases[0])], TrainConfig(precision="fp16"),
                   progress=False)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_a_cpu_with_bfloat16_instructions(monkeypatch, caplog, native):
    """Emulated bfloat16 made a dose step 17 times slower on an AVX2 CPU (docs/BENCHMARKS.md): the recipe's
    ``auto`` must fall back to fp32 there, and an explicit bf16 is kept but warned about.
    """
    monkeypatch.setattr(loop, "native_bf16", lambda: native)
    loop._warn_emulated_bf16.cache_clear()
    assert loop.resolve_precision("auto") == ("bf16" if native else "fp32")
    assert loop.resolve_precision("fp32") == "fp32"
    with caplog.at_level("WARNING", logger="models.loop"):
        assert loop.resolve_precision("bf16") == "bf16"
        loop.resolve_precision("bf16")  # a site trains every round: one warning per process
    assert caplog.text.count("without bfloat16 instructions") == (0 if native else 1)
    with pytest.raises(ValueError, match=r"resolve train\.precision first"):
        loop.autocast("auto")
    with loop.autocast(loop.resolve_precision("auto")):
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == (torch.bfloat16 if native else torch.float32)
    assert compose(["preset=cpu60"]).train.precision == "auto"  # the benchmark recipe runs on any CPU


def test_segmentation_works_on_the_whole_patient_not_the_possible_dose_mask(openkbp_root, protocol):
    """OpenKBP's possible-dose mask stops short of the brainstem in many patients (pt_10: two thirds of it
    outside its box): the segmentation crop, and so every prediction, must hold all of each organ.
    """
    case = load_openkbp_case(openkbp_root / "train-pats" / "pt_10", protocol)[0]
    config = ModelConfig()

    def inside(crop: encoding.Crop, mask: np.ndarray) -> float:
        box = tuple(slice(a, b) for a, b in zip(crop.start, crop.stop, strict=True))
        return mask[box].sum() / mask.sum()

    brainstem = case.structures["Brainstem"]
    assert inside(make_task("dose", protocol, config).crop(case), brainstem) < 0.5
    seg_crop = make_task("seg", protocol, config).crop(case)
    for name in protocol.oars:
        if name in case.structures:
            assert inside(seg_crop, case.structures[name]) == 1.0, name


def test_fedprox_term_keeps_weights_near_the_start(cases, protocol):
    task = make_task("dose", protocol, SMALL)
    prepared = [task.prepare(cases[0])]
    moved = []
    for mu in (0.0, 100.0):
        torch.manual_seed(0)
        net = task.build_network()
        start = [w.copy() for w in sent_weights(net)]
        loop.train(net, task, prepared, TrainConfig(epochs=3, steps_per_epoch=3, batch_size=1, lr=0.01,
                                                    proximal_mu=mu), progress=False)
        moved.append(sum(float(np.sum((a - b) ** 2)) for a, b in zip(sent_weights(net), start, strict=True)))
    assert moved[1] < moved[0]


def test_prediction_is_native_grid_and_checkpoint_round_trip(cases, protocol, tmp_path):
    task = make_task("dose", protocol, SMALL)
    torch.manual_seed(0)
    net = task.build_network()
    case = cases[0]
    dose = loop.predict(net, task, case)
    assert dose.shape == case.shape and dose.dtype == np.float32
    assert np.all(dose[~case.possible_dose_mask] == 0) and np.all(dose >= 0)
    path = save_checkpoint(tmp_path / "m.pt", task, net, {"note": "test"})
    loaded = load_checkpoint(path)
    assert loaded.task.name == "dose" and loaded.task.model_config == SMALL
    assert loaded.metadata == {"note": "test"}
    np.testing.assert_array_equal(loop.predict(loaded.network, loaded.task, case), dose)


def test_the_recipe_turns_dropout_on_for_the_dose_task_only():
    """``preset=cpu60`` adds ``configs/task_preset/cpu60_dose.yaml`` for dose; other tasks and presets keep 0."""
    assert compose(["task=dose", "preset=cpu60"]).model.dropout == 0.1
    assert compose(["task=dose", "preset=cpu60", "model.dropout=0.0"]).model.dropout == 0.0
    for overrides in (["task=seg", "preset=cpu60"], ["task=sct", "preset=cpu60"], ["task=dose", "preset=smoke"],
                      ["task=dose"]):
        assert compose(overrides).model.dropout == 0.0, overrides


def test_dropout_acts_in_training_and_not_in_prediction(cases, protocol):
    """Dropout makes two training passes differ; a prediction is the same every time (the network in eval mode)."""
    task = make_task("dose", protocol, dataclasses.replace(SMALL, dropout=0.5))
    torch.manual_seed(0)
    net = task.build_network()
    assert any(isinstance(m, torch.nn.Dropout) for m in net.modules())
    image = task.prepare(cases[0]).image[None, :, :32, :32, :32]
    with torch.no_grad():
        assert not torch.equal(net.train()(image), net(image))
    np.testing.assert_array_equal(loop.predict(net, task, cases[0]), loop.predict(net, task, cases[0]))
    assert net.training, "predict puts the network back in the mode it found it in"


def test_prediction_sees_the_patient_padded_as_in_training(cases, protocol):
    """A patient smaller than the patch is padded with air for inference exactly as for training: instance
    normalisation then sees the same context, so predicting equals the network on the padded training sample.
    """
    config = ModelConfig(channels=(4, 8), strides=(2,), res_units=0, downsample=2, patch=(64, 64, 64))
    task = make_task("dose", protocol, config)
    torch.manual_seed(0)
    net = task.build_network().eval()
    prep = task.prepare(cases[0])
    assert all(s < 64 for s in prep.image.shape[1:]), "the test needs a patient smaller than the patch"
    d0, d1, d2 = prep.image.shape[1:]
    l0, l1, l2 = ((64 - d) // 2 for d in (d0, d1, d2))  # centred: the odd voxel goes after the patient
    pads = [l2, 64 - d2 - l2, l1, 64 - d1 - l1, l0, 64 - d0 - l0]  # F.pad order: last axis first
    with torch.no_grad():
        padded_out = net(loop.pad_image(prep.image, pads)[None])[0]
    expected = task.postprocess(padded_out[:, l0:l0 + d0, l1:l1 + d1, l2:l2 + d2], cases[0], prep.crop)
    np.testing.assert_allclose(loop.predict(net, task, cases[0]), expected, atol=1e-4)


@pytest.mark.parametrize("task_name", ["seg", "dose"])
def test_flip_tta_predicts_a_mirrored_patient_as_the_mirror_of_its_prediction(cases, protocol, task_name):
    """With ``tta_flip`` an untrained (asymmetric) network's output is exactly mirror-equivariant, paired organs
    swapped: a parotid's channel on the mirrored patient is the other parotid's, mirrored. Without it, it is not.
    """
    task = make_task(task_name, protocol, ModelConfig(**{**SMALL.__dict__, "tta_flip": True}))
    torch.manual_seed(0)
    net = task.build_network().eval()
    image = task.prepare(cases[0]).image
    permutations = task.permutations()

    def mirror(volume: torch.Tensor, key: str) -> torch.Tensor:
        return torch.flip(volume, dims=(2,))[permutations[key]]

    with torch.no_grad():
        torch.testing.assert_close(loop.infer(net, task, mirror(image, "image")),
                                   mirror(loop.infer(net, task, image), "target"), rtol=0, atol=1e-6)
        plain = make_task(task_name, protocol, SMALL)
        assert not torch.allclose(loop.infer(net, plain, mirror(image, "image")),
                                  mirror(loop.infer(net, plain, image), "target"), atol=1e-3)
    if task_name == "seg":
        left, right = protocol.oars.index("LeftParotid"), protocol.oars.index("RightParotid")
        assert permutations["target"][left] == right and permutations["target"][right] == left


def test_evaluate_reports_task_metrics(cases, protocol):
    task = make_task("seg", protocol, SMALL)
    net = task.build_network()
    metrics = loop.evaluate(net, task, cases[:1])
    assert 0.0 <= metrics["dice_mean"] <= 1.0
    assert "dice_SpinalCord" in metrics and "dice_Esophagus" not in metrics  # pt_1 has no esophagus contour


def test_bad_checkpoint_file_is_a_clear_error(tmp_path):
    path = tmp_path / "x.pt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="not a fedrt checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="fedrt train"):
        load_checkpoint(tmp_path / "missing.pt")
