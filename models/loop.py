"""The one train/evaluate loop. Centralised training, each federated site, server-side evaluation and the
baselines all call ``train``, ``evaluate`` and ``predict`` from here.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from torch import nn
from tqdm import tqdm

from models import encoding
from models.augment import LATERAL_DIM, class_indices, dataset_class_ratios, foreground_indices, training_transform
from models.config import TrainConfig
from models.tasks import Prepared, Task
from models.tasks.base import Prediction
from models.weights import WeightAverage
from protocols.case import Case
from protocols.errors import ConfigError, DataError

log = logging.getLogger(__name__)
# The arithmetic a training runs in: fp32 or bfloat16 autocast.
RESOLVED_PRECISIONS = ("fp32", "bf16")
# train.precision: one of those, or auto (bf16 where the CPU has bfloat16 instructions and fp32 elsewhere).
PRECISIONS = (*RESOLVED_PRECISIONS, "auto")


@dataclass
class TrainResult:
    """What a training call did: mean loss per epoch, steps, wall time, the examples it learned from and the
    optimiser's final state (a federated site can continue from it next round).
    """

    history: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    num_examples: int = 0
    optimizer_state: dict | None = None
    validation_seconds: float = 0.0  # periodic validation (``validate_every_min``), not counted in ``seconds``
    averaged_steps: int = 0  # how many steps' weights were averaged into the result (``average_from``)
    last_weights: dict[str, torch.Tensor] | None = None  # the last step's own weights, when averaging replaced them
    precision: str = "fp32"  # the arithmetic it trained in (``train.precision`` resolved on this CPU)

    @property
    def loss(self) -> float:
        return self.history[-1] if self.history else float("nan")


def _patch_padding(shape: Sequence[int], patch: Sequence[int]) -> list[int]:
    """``F.pad`` widths (last axis first) that centre a volume in at least the patch size."""
    pads: list[int] = []
    for size, want in reversed(list(zip(shape, patch, strict=True))):
        extra = max(want - size, 0)
        pads += [extra // 2, extra - extra // 2]
    return pads


def pad_image(image: torch.Tensor, pads: list[int], ct_channels: Sequence[int] = (0,)) -> torch.Tensor:
    """Pad channel-first inputs with zeros, and with air (-1) in the CT channels."""
    padded = F.pad(image, pads)
    if any(pads):
        for c in ct_channels:
            padded[c] = F.pad(image[c] + 1.0, pads) - 1.0
    return padded


def _padded(prep: Prepared, patch: Sequence[int], ct_channels: Sequence[int]) -> dict[str, torch.Tensor | np.ndarray]:
    """Tensors of one case padded up to the patch size, with crop-sampler indices.

    Inference pads the same way (``predict``): instance normalisation sees the same context as in training.
    """
    pads = _patch_padding(prep.image.shape[1:], patch)
    item = {"image": pad_image(prep.image, pads, ct_channels), "target": F.pad(prep.target, pads),
            "mask": F.pad(prep.mask, pads)}
    if prep.target.shape[0] == 1:
        item["fg"] = item["mask"]
        item["fg_idx"], item["bg_idx"] = foreground_indices(item["mask"])
    else:
        item["fg"] = item["target"][:1]
        item["class_idx"] = class_indices(item["target"])
    return item


def learning_rate(config: TrainConfig, progress: float) -> float:
    """The learning rate at ``progress`` (0..1) through the training budget under ``config.schedule``."""
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        return config.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    raise ConfigError(f"unknown train.schedule {config.schedule!r}; choose cosine or constant")


def native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX BF16). Without them oneDNN emulates
    bfloat16 and a training step takes many times as long as in fp32 (docs/BENCHMARKS.md).
    """
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


@functools.cache
def _warn_emulated_bf16() -> None:
    """Once per process: a federated site trains every round, and one warning says it all."""
    log.warning("train.precision=bf16 on a CPU without bfloat16 instructions (%s): bfloat16 is emulated and every "
                "step takes many times as long as in fp32; use train.precision=auto",
                torch.backends.cpu.get_cpu_capability())


def resolve_precision(precision: str) -> str:
    """The arithmetic ``train.precision`` asks for on this CPU: ``auto`` is bf16 where the CPU has bfloat16
    instructions and fp32 elsewhere; fp32 and bf16 are kept, bf16 on a CPU without them with a warning.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown train.precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    if precision == "bf16" and not native_bf16():
        _warn_emulated_bf16()
    return precision


def autocast(precision: str) -> torch.autocast:
    """The arithmetic of a resolved precision (:func:`resolve_precision`): fp32, or bfloat16 autocast (weights,
    optimiser and loss stay fp32).
    """
    if precision not in RESOLVED_PRECISIONS:
        raise ConfigError(f"autocast needs fp32 or bf16, got {precision!r}: resolve train.precision first")
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _proximal_term(network: nn.Module, reference: list[torch.Tensor]) -> torch.Tensor:
    """FedProx: squared distance of the trainable weights from the round's global weights."""
    return sum(((p - r) ** 2).sum() for p, r in zip(network.parameters(), reference, strict=True))


def organ_weights(labelled: Sequence[torch.Tensor]) -> torch.Tensor:
    """Loss weight per target channel, inverse to the share of the cases that label it (the most often labelled
    weighs 1; one labelled in a third as many cases, 3; one never labelled, 0), so a rare organ teaches as much
    over the dataset as a common one (``train.balance_organs``).
    """
    share = torch.stack(list(labelled)).float().mean(0)
    return torch.where(share > 0, share.max() / share.clamp_min(1e-12), torch.zeros_like(share))


def train(network: nn.Module, task: Task, prepared: Sequence[Prepared], config: TrainConfig,
          progress: bool = True, label: str = "train", optimizer_state: dict | None = None,
          validation: Sequence[Case] = (),
          on_validation: Callable[[int, float, dict[str, float]], None] | None = None) -> TrainResult:
    """Train on random patches of the prepared cases for ``config.epochs`` (or until ``max_minutes``);
    ``optimizer_state`` (an earlier result's) continues AdamW's moments instead of starting them at zero.
    Every ``config.validate_every_min`` minutes of training the ``validation`` cases are scored and
    ``on_validation(step, minutes, scores)`` is called; that time is not taken from the training budget.
    """
    if not prepared:
        raise DataError("no training cases: check data.root and the validation report (fedrt data check)")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    patch = task.model_config.patch
    items = [_padded(p, patch, task.ct_channels) for p in prepared]
    ratios = dataset_class_ratios([item["class_idx"] for item in items]) if "class_idx" in items[0] else None
    weights = organ_weights([p.labelled for p in prepared]) if config.balance_organs else torch.ones(1)
    transform = training_transform(patch, task.permutations(), config.flip, config.intensity_jitter, config.seed,
                                   ratios, task.ct_channels)
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(len(items) / config.batch_size))
    total = config.epochs * steps_per_epoch
    budget_s = config.max_minutes * 60 if config.max_minutes else None
    precision = resolve_precision(config.precision)
    cast = autocast(precision)
    # Channels-last 3D lets oneDNN's convolutions vectorise over channels: ~20% faster on CPU, same model.
    network.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    reference = [p.detach().clone() for p in network.parameters()] if config.proximal_mu > 0 else None
    result = TrainResult(num_examples=len(prepared), precision=precision)
    average = WeightAverage() if config.average_from is not None else None
    every_s = config.validate_every_min * 60 if config.validate_every_min and validation else None
    next_validation = every_s
    start = time.perf_counter()

    def training_s() -> float:
        return time.perf_counter() - start - result.validation_seconds

    network.train()
    bar = tqdm(total=None if budget_s else total, desc=f"{label} {task.name}", unit="step", disable=not progress,
               leave=False, postfix=f"budget {config.max_minutes:g} min" if budget_s else None)
    for _ in range(config.epochs):
        order = rng.permutation(np.resize(np.arange(len(items)), steps_per_epoch * config.batch_size))
        losses = []
        for step in range(steps_per_epoch):
            elapsed = training_s()
            if budget_s and elapsed >= budget_s:
                break  # before a periodic validation: the caller scores the finished model anyway
            if next_validation is not None and elapsed >= next_validation:
                began = time.perf_counter()
                scores = evaluate(network, task, validation)
                result.validation_seconds += time.perf_counter() - began
                next_validation += every_s
                if on_validation is not None:
                    on_validation(result.steps, elapsed / 60, scores)
            fraction = max(result.steps / total, elapsed / budget_s if budget_s else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, fraction)
            picks = order[step * config.batch_size:(step + 1) * config.batch_size]
            samples = [transform(items[i])[0] for i in picks]
            batch = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in ("image", "target", "mask")}
            batch["labelled"] = torch.stack([prepared[i].labelled for i in picks]) * weights
            with cast:
                output = network(batch["image"].to(memory_format=torch.channels_last_3d))
            loss = task.loss(output.float(), batch)
            if reference is not None:
                loss = loss + 0.5 * config.proximal_mu * _proximal_term(network, reference)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            result.steps += 1
            if average is not None and fraction >= config.average_from:
                average.update(network)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if losses:
            result.history.append(float(np.mean(losses)))
        if budget_s and training_s() >= budget_s:
            break
    bar.close()
    network.to(memory_format=torch.contiguous_format)
    if average is not None and average.count:
        result.last_weights = {k: v.clone() for k, v in network.state_dict().items()}
        average.apply(network)
        result.averaged_steps = average.count
    result.optimizer_state = optimizer.state_dict()
    result.seconds = training_s()
    return result


def _sliding_window(network: nn.Module, task: Task, image: torch.Tensor) -> torch.Tensor:
    """The network's output over a working-grid image: padded as in training, in overlapping patch windows."""
    shape = image.shape[1:]
    pads = _patch_padding(shape, task.model_config.patch)
    output = sliding_window_inference(pad_image(image, pads, task.ct_channels)[None], list(task.model_config.patch),
                                      sw_batch_size=2, predictor=network, overlap=0.25, mode="gaussian")[0]
    (l2, _, l1, _, l0, _) = pads
    return output[:, l0:l0 + shape[0], l1:l1 + shape[1], l2:l2 + shape[2]]


@torch.no_grad()
def infer(network: nn.Module, task: Task, image: torch.Tensor) -> torch.Tensor:
    """The network's raw output over a working-grid image. With the model's ``tta_flip`` it is the mean of the
    image's output and its left-right mirror's, mirrored back with paired channels swapped (a left parotid seen
    in the mirror is the right one), so the prediction is exactly as symmetric as the patient.
    """
    output = _sliding_window(network, task, image)
    if task.model_config.tta_flip:
        permutations = task.permutations()
        mirror = _sliding_window(network, task, torch.flip(image, dims=(LATERAL_DIM,))[permutations["image"]])
        output = (output + torch.flip(mirror, dims=(LATERAL_DIM,))[permutations["target"]]) / 2
    return output


@torch.no_grad()
def predict(network: nn.Module, task: Task[Prediction, Any], case: Case) -> Prediction:
    """Predict one case on its native grid: inference at the model's resolution (``infer``), resampled back."""
    crop = task.crop(case)
    was_training = network.training
    network.eval()
    output = infer(network, task, encoding.to_working(task.inputs(case), crop))
    network.train(was_training)
    return task.postprocess(output, case, crop)


def evaluate(network: nn.Module, task: Task, cases: Iterable[Case], progress: bool = False) -> dict[str, float]:
    """The task's metrics over the cases, each predicted on its native grid."""
    scores = [task.score(case, predict(network, task, case))
              for case in tqdm(list(cases), desc=f"evaluate {task.name}", disable=not progress, leave=False)]
    if not scores:
        raise DataError("no cases to evaluate on: check data.root and the validation report (fedrt data check)")
    return task.summarize(scores)
