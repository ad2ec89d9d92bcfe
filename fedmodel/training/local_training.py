"""One client's local training: DP-SGD with Opacus, or plain SGD through the same loop."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fedmodel.privacy.ledger import PrivacyLedger
from fedmodel.privacy.node_policy import NOISE_SOURCES
from fedmodel.privacy.sampling_plan import sample_rate_for
from fedmodel.privacy.secure_randomness import SecureRandomness
from fedmodel.training.augmentation import (
    AugmentationSettings,
    BatchAugmenter,
    combine_copies,
    grad_sample_mode_for,
)
from fedmodel.training.poisson_sampling import poisson_loader
from fedmodel.training.tensor_batches import loader_batches

GRAD_SAMPLE_MODES = ("hooks", "ew", "functorch", "ghost")


@dataclass(frozen=True)
class TrainingSettings:
    """How a client trains in one round.

    ``batch_size`` is the *expected* batch size: under DP, batches are drawn by Poisson
    sampling with rate ``1 / ceil(N / batch_size)`` (Opacus's convention), ``ceil(N /
    batch_size)`` of them per epoch, so their realised size varies around it.

    ``proximal_mu`` is FedProx's ``mu`` (Li et al. 2020): after every optimizer step the
    weights are pulled towards the round's global model (see :func:`train_locally`);
    0 is plain local training, and ``learning_rate * proximal_mu`` must be below 1.

    ``augmentation``, ``augmentation_multiplicity`` and ``mixup_alpha`` are those of
    :class:`~fedmodel.training.augmentation.AugmentationSettings` (mixup: no DP only).
    """

    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float = 0.0
    dp: bool = True
    noise_multiplier: float = 1.0
    max_grad_norm: float = 1.0
    grad_sample_mode: str = "ghost"
    proximal_mu: float = 0.0
    augmentation: str = "none"
    augmentation_multiplicity: int = 1
    mixup_alpha: float = 0.0

    def __post_init__(self) -> None:
        _ = self.augmentation_settings  # validates the augmentation fields
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.noise_multiplier < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        if not self.proximal_mu >= 0:  # also refuses nan
            raise ValueError(f"proximal_mu must be >= 0, got {self.proximal_mu}")
        if self.learning_rate * self.proximal_mu >= 1:
            raise ValueError(
                f"learning_rate * proximal_mu must be < 1, got {self.learning_rate} * "
                f"{self.proximal_mu} (the proximal step would reach or pass the global model)"
            )
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(
                f"unknown grad_sample_mode {self.grad_sample_mode!r}: "
                f"must be one of {', '.join(GRAD_SAMPLE_MODES)}"
            )

    @property
    def augmentation_settings(self) -> AugmentationSettings:
        """The augmentation fields as :class:`AugmentationSettings` (validated)."""
        return AugmentationSettings(
            augmentation=self.augmentation,
            multiplicity=self.augmentation_multiplicity,
            mixup_alpha=self.mixup_alpha,
            dp=self.dp,
        )


@dataclass(frozen=True)
class LocalTrainingResult:
    """What a round of local training produced."""

    state_dict: dict[str, torch.Tensor]
    num_examples: int
    mean_loss: float
    steps: int


def train_locally(
    model: nn.Module,
    dataset: Dataset,
    *,
    settings: TrainingSettings,
    ledger: PrivacyLedger | None,
    seed: int,
    noise_source: str = "seeded",
    device: torch.device | None = None,
) -> LocalTrainingResult:
    """Train ``model`` in place for ``settings.epochs`` epochs over ``dataset``.

    With ``settings.dp``, DP-SGD (Abadi et al. 2016, https://arxiv.org/abs/1607.00133)
    via Opacus: Poisson-sampled batches, each example's gradient clipped to
    ``max_grad_norm``, Gaussian noise of std ``noise_multiplier * max_grad_norm`` added
    to the sum, divided by the expected batch size. Every step is recorded in
    ``ledger`` (required under DP). Without DP, plain SGD on shuffled batches.

    The loss is summed over the batch and divided by the expected batch size, a public
    constant, never averaged over the realised (private) batch size (Opacus issue
    #819). Opacus then sees a per-example loss ``l_i / B``, whose gradient is the true
    one scaled by ``1 / B``; clipping that at ``max_grad_norm / B`` and adding noise of
    std ``sigma * max_grad_norm / B`` is exactly DP-SGD with clip ``max_grad_norm``,
    divided by ``B``. The accountant depends only on sigma and the sampling rate.

    ``noise_source`` decides where DP-SGD's randomness (the Poisson batches and the
    Gaussian noise) comes from: ``"seeded"``, torch generators seeded by ``seed``
    (reproducible bit for bit, and regenerable by anyone who knows ``seed``), or
    ``"secure"``, ChaCha20 keyed from ``os.urandom`` for this call only
    (:class:`~fedmodel.privacy.secure_randomness.SecureRandomness`): nobody can
    regenerate them, and ``seed`` only orders non-DP shuffling.

    With ``settings.proximal_mu = mu > 0`` this is FedProx's local solver (Li et al.
    2020, Federated Optimization in Heterogeneous Networks, MLSys,
    https://arxiv.org/abs/1812.06127): the weights ``model`` holds at entry are the
    round's global model ``w_global`` (a detached copy is kept), and after every optimizer
    step each parameter takes the gradient step of the proximal term ``mu / 2 * ||w -
    w_global||^2``, ``w <- w - lr * mu * (w - w_global)``. It is applied outside the
    private step, after clipping and noise: it depends on ``w``, ``w_global`` and the
    public ``mu`` and ``lr`` only, never on a record, so it is post-processing of
    the DP-SGD outputs and the DP guarantee (and the ledger's accounting) is unchanged.
    With ``mu = 0`` nothing is copied or applied: training is bit-identical to plain
    local training.

    ``device`` (default: the CPU) is where ``model`` is moved and trained: batches,
    Opacus's per-sample gradients and the seeded noise (a generator on ``device``, so no
    host round trip per step) live there. Poisson batches are still drawn on the CPU,
    so a seed picks the same batches on every device. Secure noise is drawn on the CPU
    (ChaCha20) and copied to ``device`` each step.

    Returns the weights of the unwrapped module (no ``_module.`` prefix), on the CPU.
    """
    if noise_source not in NOISE_SOURCES:
        raise ValueError(f"noise_source must be one of {NOISE_SOURCES}, got {noise_source!r}")
    num_examples = len(dataset)  # type: ignore[arg-type]
    sample_rate = sample_rate_for(num_examples, settings.batch_size)
    expected_batch_size = sample_rate * num_examples
    mu = settings.proximal_mu
    device = torch.device("cpu") if device is None else device
    model.to(device)  # in place: the optimizer below and the anchor see the moved parameters
    # FedProx's anchor: the global model this round started from (parameters only).
    anchor = [(p, p.detach().clone()) for p in model.parameters()] if mu > 0 else []
    generator = torch.Generator().manual_seed(seed)
    # Dropout-free models: this only guards any library-internal use of torch's RNG. On
    # the CPU only the CPU's generator: torch.manual_seed also queues a seed for every
    # accelerator, formatting a stack trace each time (~0.13 ms a call).
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)
    secure = SecureRandomness() if settings.dp and noise_source == "secure" else None
    if settings.dp:
        bernoulli = secure.bernoulli if secure else _seeded_bernoulli(generator)
        loader = poisson_loader(dataset, batch_size=settings.batch_size, bernoulli=bernoulli)
    else:
        loader = DataLoader(
            dataset, batch_size=settings.batch_size, shuffle=True, generator=generator
        )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=settings.learning_rate, momentum=settings.momentum
    )
    criterion: nn.Module = nn.CrossEntropyLoss(reduction="sum")
    trained: nn.Module = model
    augmenting = settings.augmentation_settings
    augmenter = BatchAugmenter(augmenting, seed=seed) if augmenting.active else None
    grad_sample_mode = grad_sample_mode_for(settings.grad_sample_mode, augmenting)
    if settings.dp:
        if ledger is None:
            raise ValueError("DP training needs a PrivacyLedger to record its steps")
        with warnings.catch_warnings():
            # Opacus warns that its non-secure RNG is on: seeded, reproducible noise is
            # what simulations need (see README, "Privacy guarantees", on secure_mode).
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(accountant=ledger.accountant_name)
            engine.accountant = ledger.accountant  # Opacus records each step in our ledger
            noise_generator = (
                None if secure else torch.Generator(device=device).manual_seed(seed + 1)
            )
            prepared = engine.make_private(
                module=model,
                optimizer=optimizer,
                criterion=criterion,
                data_loader=loader,
                noise_multiplier=settings.noise_multiplier,
                max_grad_norm=settings.max_grad_norm / expected_batch_size,
                loss_reduction="sum",
                poisson_sampling=False,  # the loader above samples (see poisson_sampling.py)
                grad_sample_mode=grad_sample_mode,
                noise_generator=noise_generator,
            )
        if grad_sample_mode == "ghost":
            trained, optimizer, criterion, loader = prepared
        else:
            trained, optimizer, loader = prepared
        if secure:
            _draw_noise_from(secure, optimizer)  # type: ignore[arg-type]

    trained.train()
    total_loss, total_seen, steps = 0.0, 0, 0
    with warnings.catch_warnings():
        # Opacus's hooks fire on the first layer even though inputs need no gradient.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(settings.epochs):
            for x, y in loader_batches(loader):  # as `in loader`, without per-example fetches
                x, y = x.to(device), y.to(device)  # no copy on the CPU
                optimizer.zero_grad(set_to_none=True)
                if augmenter:  # augmentation.py: per-example copies, mixup (no DP)
                    loss = augmenter.loss(trained, criterion, x, y) / expected_batch_size
                else:
                    loss = criterion(trained(x), y) / expected_batch_size
                loss.backward()
                if settings.dp and augmenting.multiplicity > 1:
                    combine_copies(optimizer.params, multiplicity=augmenting.multiplicity)  # type: ignore[attr-defined]
                optimizer.step()
                if anchor:
                    _proximal_step(anchor, step_size=settings.learning_rate * mu)
                steps += 1
                total_loss += float(loss.item()) * expected_batch_size
                total_seen += len(y)
    if settings.dp and hasattr(trained, "_close"):
        trained._close()  # remove Opacus hooks so ``model`` is a plain module again
    # Weights leave as CPU tensors whatever the device: messages and run folder unchanged.
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return LocalTrainingResult(
        state_dict=state,
        num_examples=num_examples,
        mean_loss=total_loss / max(total_seen, 1),
        steps=steps,
    )


@torch.no_grad()
def _proximal_step(anchor: list[tuple[nn.Parameter, torch.Tensor]], *, step_size: float) -> None:
    """``w <- w - step_size * (w - w_global)`` for every (parameter, global copy) pair.

    The gradient step of FedProx's proximal term ``mu / 2 * ||w - w_global||^2`` with
    ``step_size = lr * mu`` (Li et al. 2020); data-independent, so outside DP-SGD.
    """
    for parameter, global_value in anchor:
        parameter.sub_(parameter - global_value, alpha=step_size)


def _seeded_bernoulli(generator: torch.Generator):
    """Opacus's own Poisson draw (``UniformWithReplacementSampler``) from ``generator``."""

    def draw(n: int, p: float) -> torch.Tensor:
        return torch.rand(n, generator=generator) < p

    return draw


def _draw_noise_from(secure: SecureRandomness, optimizer: DPOptimizer) -> None:
    """Make ``optimizer`` add Gaussian noise drawn from ``secure`` instead of torch's RNG.

    Opacus's own ``secure_mode`` would do this with ``torchcsprng``, which is archived
    and not built for current torch; so this replaces ``DPOptimizer.add_noise`` on this
    one optimizer with the same steps (std ``noise_multiplier * max_grad_norm`` on the
    clipped sum), drawing from ChaCha20 with the floating-point attack handled as in
    Opacus's secure mode (see :meth:`SecureRandomness.gaussian`).
    """

    def add_noise() -> None:
        std = optimizer.noise_multiplier * optimizer.max_grad_norm
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            noise = secure.gaussian(p.summed_grad.shape, std=std, dtype=p.summed_grad.dtype)
            p.grad = (p.summed_grad + noise.to(p.summed_grad.device)).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise  # type: ignore[method-assign]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` (a plain, unwrapped module).

    With ``device``, ``model`` is moved there (in place) and the batches follow it. The
    default batch of 256 keeps a conv net's activations in the CPU's cache: the MNIST
    CNN's 10,000 test images took ~1.0-1.2 s at 256 and ~1.7-1.9 s at 1,024 (2 cores).
    """
    if device is not None:
        model.to(device)
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader_batches(DataLoader(dataset, batch_size=batch_size)):
        if device is not None:
            x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
        seen += len(y)
    if seen == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return total_loss / seen, correct / seen
