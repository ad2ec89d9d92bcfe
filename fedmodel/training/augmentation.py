"""Data augmentation in local training: random crops, flips, shifts, mixup, multiplicity.

Augmentation here is a random function applied to each training example on its own
(random crop after zero padding, horizontal flip, small random shift), drawn fresh for
every batch from a generator seeded by the training seed, so a run is reproducible.

Under DP-SGD an augmentation of one example is still a function of that example only,
so clipping each example's gradient keeps the record-level sensitivity at the clip
norm. Augmentation multiplicity (De et al. 2022, "Unlocking High-Accuracy
Differentially Private Image Classification through Scale",
https://arxiv.org/abs/2204.13650, Sec. 3.1) takes ``K`` augmented copies of each
example and averages their gradients *before* clipping: the clipped per-example
gradient is still bounded by the clip norm, and the ledger (noise, sampling rate,
steps) is unchanged.

Mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412) blends pairs of
examples: one record then enters two training examples, so DP-SGD's per-example
bound no longer bounds one record's influence. It is for training without DP only
(the run config and :class:`AugmentationSettings` refuse it under DP).

Written by hand because per-example random crops of a batch tensor need one offset
per example (torchvision's transforms draw one crop per call, and torchvision is not
a dependency); everything is vectorised, no Python loop over examples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fedmodel.config import AUGMENTATIONS, ConfigError

# The grad-sample modes whose per-example gradients (``p.grad_sample``) can be averaged
# over the K copies before clipping. Ghost clipping never materialises them (it clips
# from per-row norms, and the norm of an average is not the average of norms): with
# K > 1 it falls back to "hooks", which clips the same quantity exactly.
MULTIPLICITY_GRAD_SAMPLE_MODES = ("hooks", "functorch")


@dataclass(frozen=True)
class AugmentationSettings:
    """What local training does to each batch (run-config ``augmentation``,
    ``augmentation-multiplicity``, ``mixup-alpha``).

    Parameters
    ----------
    augmentation : str
        ``"none"``; ``"crop"``: zero-pad by ``ceil(side / 8)`` pixels (4 on 32x32, CIFAR
        style) and crop back at a random offset; ``"crop-flip"``: also flip
        horizontally with probability 1/2 (for natural images, not digits);
        ``"shift"``: a random shift of up to ``max(1, side // 14)`` pixels (2 on 28x28),
        zero-filled.
    multiplicity : int
        ``K`` augmented copies of each example, their gradients averaged before
        clipping (De et al. 2022). 1: one copy.
    mixup_alpha : float
        Mixup's Beta(alpha, alpha) parameter; 0: off. Without DP only.
    dp : bool
        Training is DP-SGD (mixup refused).
    """

    augmentation: str = "none"
    multiplicity: int = 1
    mixup_alpha: float = 0.0
    dp: bool = True

    def __post_init__(self) -> None:
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(
                f"augmentation must be one of {', '.join(AUGMENTATIONS)}, got {self.augmentation!r}"
            )
        if self.multiplicity < 1:
            raise ValueError(f"augmentation multiplicity must be >= 1, got {self.multiplicity}")
        if self.multiplicity > 1 and self.augmentation == "none":
            raise ValueError("augmentation multiplicity > 1 needs an augmentation (copies differ)")
        if not self.mixup_alpha >= 0:  # also refuses nan
            raise ValueError(f"mixup_alpha must be >= 0, got {self.mixup_alpha}")
        if self.dp and self.mixup_alpha > 0:
            raise ValueError(
                "mixup is refused under DP: it blends pairs of examples, so one record "
                "reaches two training examples and the record-level per-example "
                "sensitivity bound of DP-SGD no longer holds"
            )

    @property
    def active(self) -> bool:
        """Anything to do (otherwise local training runs its plain loop, bit for bit)."""
        return self.augmentation != "none" or self.mixup_alpha > 0


class BatchAugmenter:
    """Applies :class:`AugmentationSettings` to the batches of one round of local training.

    Parameters
    ----------
    settings : AugmentationSettings
    seed : int
        The round's training seed; the augmentation draws come from a stream derived from
        it (not the one that draws batches or noise), so a seed gives the same run.
    """

    def __init__(self, settings: AugmentationSettings, *, seed: int) -> None:
        self.settings = settings
        # A stream of its own: adding augmentation leaves the batches and noise unchanged.
        state = np.random.SeedSequence([seed, 0xA06]).generate_state(2)
        self.generator = torch.Generator().manual_seed(int(state[0]))
        self.rng = np.random.default_rng(int(state[1]))

    def loss(self, model: nn.Module, criterion: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """The batch's summed loss: ``sum_i mean_k l(aug_k(x_i), y_i)`` (or mixup's).

        ``criterion`` sums over the batch (``reduction="sum"``). The ``K`` copies of
        example ``i`` are rows ``i*K .. i*K + K-1`` of the augmented batch, each row's
        loss weighted ``1/K``: a copy's per-row gradient is ``g_ik / K``, and
        :func:`combine_copies` sums them into example ``i``'s gradient of the mean.
        """
        k = self.settings.multiplicity
        x = self.augment(x.repeat_interleave(k, dim=0) if k > 1 else x)
        if k > 1:
            y = y.repeat_interleave(k, dim=0)
        if self.settings.mixup_alpha > 0:
            lam = float(self.rng.beta(self.settings.mixup_alpha, self.settings.mixup_alpha))
            order = torch.randperm(len(y), generator=self.generator).to(x.device)
            out = model(lam * x + (1 - lam) * x[order])
            return (lam * criterion(out, y) + (1 - lam) * criterion(out, y[order])) / k
        return criterion(model(x), y) / k

    def augment(self, x: Tensor) -> Tensor:
        """``x`` (``(N, C, H, W)`` or ``(N, H, W)``) with each example augmented on its own."""
        name = self.settings.augmentation
        if name == "none":
            return x
        if x.dim() not in (3, 4) or min(x.shape[-2:]) < 2:
            raise ValueError(
                f"augmentation = {name!r} needs image examples ((C, H, W) or (H, W) of at "
                f"least 2x2), got examples of shape {tuple(x.shape[1:])}; use "
                "augmentation = 'none' for this data"
            )
        height, width = x.shape[-2:]
        side = min(height, width)
        reach = max(1, side // 14) if name == "shift" else math.ceil(side / 8)
        x = _random_translate(x, reach=reach, generator=self.generator)
        if name == "crop-flip":
            flip = torch.rand(len(x), generator=self.generator) < 0.5
            x = torch.where(flip.to(x.device).view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)
        return x


def check_input_shape(augmentation: str, input_shape: tuple[int, ...]) -> None:
    """Refuse, before round 1, an ``augmentation`` that ``input_shape`` examples cannot take.

    Raises
    ------
    ConfigError
        Naming run-config key ``augmentation``, its value and the examples' shape.
    """
    shape = tuple(input_shape)
    if augmentation != "none" and (len(shape) not in (2, 3) or min(shape[-2:]) < 2):
        raise ConfigError(
            f"run-config key 'augmentation' = {augmentation!r} needs image examples ((C, H, W) "
            f"or (H, W) of at least 2x2); this data's examples have shape {shape}: use "
            "augmentation = 'none'"
        )


def _random_translate(x: Tensor, *, reach: int, generator: torch.Generator) -> Tensor:
    """Zero-pad by ``reach`` and crop back to size at a random offset per example.

    The same as torchvision's ``RandomCrop(size, padding=reach)`` drawn per example; an
    offset of ``reach`` is the unshifted image.
    """
    n, height, width = len(x), x.shape[-2], x.shape[-1]
    padded = nn.functional.pad(x, (reach, reach, reach, reach))
    dy = torch.randint(0, 2 * reach + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * reach + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(height, device=x.device))[:, :, None]  # (N, H, 1)
    cols = (dx[:, None] + torch.arange(width, device=x.device))[:, None, :]  # (N, 1, W)
    index = torch.arange(n, device=x.device)[:, None, None]
    if x.dim() == 3:
        return padded[index, rows, cols]
    return padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)


def grad_sample_mode_for(mode: str, settings: AugmentationSettings) -> str:
    """The Opacus grad-sample mode to train with: ``mode``, or ``"hooks"`` for ghost
    clipping under multiplicity (see :data:`MULTIPLICITY_GRAD_SAMPLE_MODES`).

    Raises ``ValueError`` for a mode that cannot average copies and has no exact
    stand-in.
    """
    if not settings.dp or settings.multiplicity == 1 or mode in MULTIPLICITY_GRAD_SAMPLE_MODES:
        return mode
    if mode == "ghost":
        return "hooks"  # the same clipped gradients, materialised per example
    raise ValueError(
        f"augmentation multiplicity > 1 under DP needs grad-sample-mode "
        f"{' or '.join(repr(m) for m in (*MULTIPLICITY_GRAD_SAMPLE_MODES, 'ghost'))}, "
        f"got {mode!r} (its per-example gradients cannot be averaged over the copies)"
    )


def combine_copies(params: list[nn.Parameter], *, multiplicity: int) -> None:
    """Sum each example's ``multiplicity`` per-copy gradients in ``p.grad_sample``.

    Called between ``backward()`` and the DP optimizer's ``step()``: Opacus then clips
    and noises one gradient per *example* (the average over its copies, as each copy's
    loss carries ``1/K``; De et al. 2022), not one per copy, so the per-example
    sensitivity is the clip norm and the accounting is that of the unaugmented batch.
    """
    for p in params:
        sample = p.grad_sample
        if sample is None:
            continue
        if isinstance(sample, list):  # accumulated over backward passes: copies stay adjacent
            sample = torch.cat(sample, dim=0)
        rows = sample.shape[0]
        p.grad_sample = sample.view(rows // multiplicity, multiplicity, *sample.shape[1:]).sum(1)
