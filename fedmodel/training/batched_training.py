"""Train a cohort of clients at once: the same local training, vectorised over clients.

For many small clients with small models and small batches, a round of
:func:`~fedmodel.training.local_training.train_locally` calls is bound by per-step
Python, dispatcher, optimizer and Opacus overhead, not by arithmetic. Here the ``K``
clients' weights are stacked along a leading dimension and every step runs once for the
whole cohort with :mod:`torch.func`: ``vmap`` over clients of the batch gradient
(without DP), or of ``vmap`` over examples of ``grad`` (per-example gradients for DP-SGD,
Abadi et al. 2016, https://arxiv.org/abs/1607.00133; the functorch approach of Opacus's
``grad_sample_mode = "functorch"``).

It is the same algorithm as :func:`train_locally`, client by client:

- the same batches: each client's generator is seeded with its own seed and drawn in
  the same order (:class:`~fedmodel.training.poisson_sampling.PoissonBatchSampler` at
  the client's own rate under DP, torch's shuffling ``DataLoader`` without);
- under DP each example's gradient of ``l_i / B_e`` (``B_e`` the expected batch size)
  clipped at ``max_grad_norm / B_e`` with Opacus's factor ``min(1, c / (norm + 1e-6))``,
  summed, plus Gaussian noise of std ``sigma * max_grad_norm / B_e`` from a generator
  seeded ``seed + 1`` and drawn per parameter in Opacus's order: with the same seeds the
  noise is the sequential path's, value for value;
- torch's SGD update (momentum buffers per client), FedProx's proximal step;
- the same number of steps per client: a client whose steps are done is left out of the
  remaining steps (clients of different sizes take different numbers of steps).

Ragged batches (Poisson batch sizes vary, the last shuffled batch is short) are padded
to the step's largest batch with rows whose mask is 0, so they add exact zeros. Results
agree with :func:`train_locally` to floating-point rounding (1e-12 in float64, see
``tests/fedmodel/training/test_batched_training.py``), not bit for bit: summation order
inside batched kernels differs.

The built-in models (:class:`~fedmodel.models.cnn.CNN`, :class:`~fedmodel.models.mlp.
MLP`) take another route to the same gradients: one forward and one backward pass of the
whole cohort, then each layer's per-example gradients (under DP) or each client's batch
gradient from its inputs and output gradients, as Opacus's hooks do
(:class:`_LayerChain`; for the MNIST CNN at B = 10 1.6-1.9x less CPU than
``vmap(grad)``, for the digits MLP at K = 100 about 3x less; and no ``torch.func.grad``,
whose first call imports ``torch._dynamo``, ~1 s). Other models (a user's own
``forward``) and compiled steps keep ``vmap``.

Secure noise (ChaCha20, ``noise_source = "secure"``) is not drawn here: the caller uses
:func:`train_locally` for it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap
from torch.utils.data import DataLoader, Dataset

from fedmodel.privacy.ledger import PrivacyLedger
from fedmodel.privacy.sampling_plan import sample_rate_for, steps_per_epoch_for
from fedmodel.training.local_training import LocalTrainingResult, TrainingSettings
from fedmodel.training.poisson_sampling import PoissonBatchSampler
from fedmodel.training.tensor_batches import batch_indices, is_plain_tensor_dataset

# Opacus's clipping factor min(1, c / (norm + eps)) (opacus/optimizers/optimizer.py).
_CLIP_EPSILON = 1e-6
# Slack over the expected batch size when sizing chunks: a Poisson batch above 2 B is rare.
_BATCH_SLACK = 2
# Per-example gradients, their clipped copy and the einsum's workspace.
_GRADIENT_COPIES = 3


@dataclass(frozen=True)
class CohortMember:
    """One client of a cohort: its data, its starting weights, its seed and its noise.

    Parameters
    ----------
    dataset : Dataset
        The client's training examples, ``(x, y)`` pairs (a ``TensorDataset`` is read
        without copying item by item).
    initial_state : mapping of str to Tensor
        The weights it starts from (the round's global model); every key of the
        template model's ``state_dict``.
    seed : int
        As :func:`train_locally`'s ``seed``: batches from ``seed``, noise from ``seed + 1``.
    noise_multiplier : float
        This client's sigma under DP (its round plan's); unused without DP.
    ledger : PrivacyLedger, optional
        Under DP, where this client's steps are recorded (required then).
    """

    dataset: Dataset
    initial_state: Mapping[str, Tensor]
    seed: int
    noise_multiplier: float = 0.0
    ledger: PrivacyLedger | None = None

    def __post_init__(self) -> None:
        if not self.noise_multiplier >= 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if len(self.dataset) < 1:  # type: ignore[arg-type]
            raise ValueError("a cohort member needs at least one training example")


@dataclass(frozen=True)
class CohortTiming:
    """Where a cohort's time went (seconds): compiling (first calls) and the rest."""

    compile_s: float
    train_s: float


def unbatchable_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be trained here (None: it can).

    Dropout draws from the global RNG per call and BatchNorm updates running statistics
    in place; neither maps to a per-client ``vmap`` that matches the sequential path.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            return f"module {name!r} is {type(module).__name__} (random per call)"
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return f"module {name!r} is {type(module).__name__} (running statistics)"
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        return f"parameters {', '.join(frozen)} are frozen (requires_grad = False)"
    return None


def has_conv(model: nn.Module) -> bool:
    """Whether ``model`` has a convolution (its cohort's step is compute-bound)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def layer_by_layer(model: nn.Module) -> bool:
    """Whether ``model``'s gradients (per example under DP) come layer by layer
    (:class:`_LayerChain`: the built-in CNN and MLP) rather than from ``vmap``."""
    return _LayerChain.of(model, [name for name, _ in model.named_parameters()]) is not None


def cohort_chunk_size(
    model: nn.Module, *, settings: TrainingSettings, input_numel: int, memory_mb: float
) -> int:
    """How many clients one chunk may hold so its step fits in ``memory_mb`` (0: no limit).

    Under DP the per-example gradients dominate: ``K x B x |params|`` values per step
    (Section "Memory" of issue 13: 0.4 GB at K = 50, B = 60 and 26k parameters).
    """
    if memory_mb == 0:
        return 1 << 30
    itemsize = next(model.parameters()).element_size()
    params = sum(p.numel() for p in model.parameters())
    batch = _BATCH_SLACK * settings.batch_size
    per_client = itemsize * (
        (batch if settings.dp else 1) * params * _GRADIENT_COPIES + batch * input_numel * 4
    )
    return max(1, int(memory_mb * 2**20 // per_client))


def train_cohort(
    model: nn.Module,
    members: Sequence[CohortMember],
    *,
    settings: TrainingSettings,
    device: torch.device | None = None,
    memory_mb: float = 0.0,
    compiled: bool = False,
) -> tuple[list[LocalTrainingResult], CohortTiming]:
    """Train every member as :func:`train_locally` would, all members in each step.

    Parameters
    ----------
    model : nn.Module
        The template: its architecture and buffers are used, never its weights (each
        member brings its own). Only its mode changes (to training, as train_locally).
    members : sequence of CohortMember
        The clients, trained independently of each other.
    settings : TrainingSettings
        As for :func:`train_locally`, shared by the cohort; ``noise_multiplier`` is
        each member's own and ``grad_sample_mode`` is not used (``torch.func``
        computes the per-example gradients).
    device : torch.device, optional
        Where the cohort trains (default: the CPU). Batches are drawn on the CPU, as by
        :func:`train_locally`; the weights come back as CPU tensors.
    memory_mb : float
        Train the cohort in chunks of clients whose step fits this budget
        (:func:`cohort_chunk_size`); 0: all at once. Chunking does not change results.
    compiled : bool
        Compile the step's gradient function with ``torch.compile`` (one-off cost,
        reported in the returned timing).

    Returns
    -------
    results, timing
        One :class:`LocalTrainingResult` per member, in order; under DP each member's
        steps are recorded in its ledger (after its training, as Opacus does per step).
    """
    if not members:
        raise ValueError("a cohort needs at least one member")
    if memory_mb < 0:
        raise ValueError(f"memory_mb must be >= 0, got {memory_mb}")
    reason = unbatchable_reason(model)
    if reason is not None:
        raise ValueError(f"this model cannot be trained as a cohort: {reason}")
    # Augmentation and mixup draw per batch from the client's generator: not batched here.
    if getattr(settings, "augmentation", "none") != "none" or (
        getattr(settings, "augmentation_multiplicity", 1) > 1
        or getattr(settings, "mixup_alpha", 0.0) > 0
    ):
        raise ValueError("augmentation and mixup are not batched: train these with train_locally")
    if settings.dp and any(m.ledger is None for m in members):
        raise ValueError("DP training needs a PrivacyLedger per member to record its steps")
    device = torch.device("cpu") if device is None else device
    first_x = members[0].dataset[0][0]
    size = cohort_chunk_size(
        model,
        settings=settings,
        input_numel=int(torch.as_tensor(first_x).numel()),
        memory_mb=memory_mb,
    )
    trainer = _CohortStep(model, settings=settings, device=device, compiled=compiled)
    results: list[LocalTrainingResult] = []
    started = time.perf_counter()
    for start in range(0, len(members), size):
        results += trainer.train(members[start : start + size])
    total = time.perf_counter() - started
    timing = CohortTiming(compile_s=trainer.compile_s, train_s=total - trainer.compile_s)
    if settings.dp:
        for member, result in zip(members, results, strict=True):
            assert member.ledger is not None
            rate = sample_rate_for(len(member.dataset), settings.batch_size)  # type: ignore[arg-type]
            member.ledger.record(
                noise_multiplier=member.noise_multiplier, sample_rate=rate, steps=result.steps
            )
    return results, timing


class _CohortStep:
    """The vectorised step functions of one model and settings, reused across chunks."""

    def __init__(
        self, model: nn.Module, *, settings: TrainingSettings, device: torch.device, compiled: bool
    ) -> None:
        self.settings = settings
        self.device = device
        self.names = [name for name, _ in model.named_parameters()]
        self.noise_runs = _noise_runs(model, device)
        self.keys = list(model.state_dict())
        self.buffers = {n: b.detach().to(device) for n, b in model.named_buffers()}
        template = model
        self.compile_s = 0.0

        def batch_loss(params: dict[str, Tensor], x: Tensor, y: Tensor, mask: Tensor, eb: Tensor):
            logits = functional_call(template, (params, self.buffers), (x,))
            losses = nn.functional.cross_entropy(logits, y, reduction="none")
            return (losses * mask).sum() / eb

        def example_loss(params: dict[str, Tensor], x: Tensor, y: Tensor, eb: Tensor):
            logits = functional_call(template, (params, self.buffers), (x.unsqueeze(0),))
            loss = nn.functional.cross_entropy(logits, y.unsqueeze(0), reduction="sum") / eb
            return loss, loss

        if settings.dp:
            per_example = vmap(grad(example_loss, has_aux=True), in_dims=(None, 0, 0, None))
            step: Callable[..., Any] = vmap(per_example, in_dims=(0, 0, 0, 0))
        else:
            step = vmap(grad_and_value(batch_loss), in_dims=(0, 0, 0, 0, 0))
        self.eager = step
        if compiled:
            step = torch.compile(step, dynamic=True)
        self.step = step
        self.compiled = compiled
        # Under DP, conv nets' per-example gradients layer by layer (see _LayerChain).
        # The built-in models' gradients layer by layer (see _LayerChain), with DP or not.
        self.chain = _LayerChain.of(model, self.names) if not compiled else None
        template.train()

    def _call(self, *args: Any) -> Any:
        if not self.compiled or self.compile_s:
            return self.step(*args)
        started = time.perf_counter()  # the first call compiles
        try:
            out = self.step(*args)
        except Exception as error:  # noqa: BLE001 - compiling is optional: run eagerly
            # torch 2.13 (CPU) cannot trace cross_entropy under vmap of grad (dynamo's
            # fake tensors); the eager step computes the same values.
            warnings.warn(
                f"batched training: torch.compile failed ({type(error).__name__}); running eagerly",
                stacklevel=2,
            )
            self.step, self.compiled = self.eager, False
            return self.step(*args)
        self.compile_s = time.perf_counter() - started
        return out

    def train(self, members: Sequence[CohortMember]) -> list[LocalTrainingResult]:
        settings, device = self.settings, self.device
        count = len(members)
        data = [_tensors(m.dataset) for m in members]
        sizes = [len(y) for _, y in data]
        plans = [_batches(m, n, settings) for m, n in zip(members, sizes, strict=True)]
        steps = [len(plan) for plan in plans]
        expected = [sample_rate_for(n, settings.batch_size) * n for n in sizes]
        dtype = members[0].initial_state[self.names[0]].dtype
        # Every client's examples in one tensor, and a zero row that padding points at.
        offsets = np.cumsum([0, *sizes])
        x_all = torch.cat([x for x, _ in data] + [torch.zeros_like(data[0][0][:1])]).to(device)
        y_all = torch.cat([y for _, y in data] + [torch.zeros_like(data[0][1][:1])]).to(device)
        pad = int(offsets[-1])
        first = members[0].initial_state
        if all(m.initial_state is first for m in members):  # a round's global weights
            params = {
                n: first[n].detach().to(device).expand(count, *first[n].shape).clone()
                for n in self.names
            }
        else:
            params = {
                n: torch.stack([m.initial_state[n].detach() for m in members]).to(device)
                for n in self.names
            }
        anchor = {n: p.clone() for n, p in params.items()} if settings.proximal_mu > 0 else {}
        momentum: dict[str, Tensor] = {}
        eb_all = torch.tensor(expected, dtype=dtype, device=device)
        clip_all = torch.tensor(
            [settings.max_grad_norm / e for e in expected], dtype=dtype, device=device
        )
        noise_generators = [
            torch.Generator(device=device).manual_seed(m.seed + 1)
            if settings.dp and m.noise_multiplier > 0
            else None
            for m in members
        ]
        total_loss = [0.0] * count
        seen = [0] * count
        lr, mu = settings.learning_rate, settings.proximal_mu
        for t in range(max(steps)):
            active = [k for k in range(count) if t < steps[k]]
            batches = [plans[k][t] for k in active]
            width = max(1, max(len(b) for b in batches))
            index = np.full((len(active), width), pad, dtype=np.int64)
            mask_np = np.zeros((len(active), width))
            for row, (k, batch) in enumerate(zip(active, batches, strict=True)):
                index[row, : len(batch)] = offsets[k] + np.asarray(batch, dtype=np.int64)
                mask_np[row, : len(batch)] = 1.0
            gather = torch.from_numpy(index).to(device)
            x, y = x_all[gather], y_all[gather]
            mask = torch.from_numpy(mask_np).to(device=device, dtype=dtype)
            everyone = len(active) == count
            rows = None if everyone else torch.tensor(active, device=device)
            current = params if rows is None else {n: p[rows] for n, p in params.items()}
            eb = eb_all if rows is None else eb_all[rows]
            if settings.dp:
                stds = [
                    members[k].noise_multiplier * (settings.max_grad_norm / expected[k])
                    for k in active
                ]
                grads, value = self._private_gradients(
                    current,
                    x,
                    y,
                    mask,
                    eb,
                    clip_all if rows is None else clip_all[rows],
                    stds,
                    [noise_generators[k] for k in active],
                )
            elif self.chain is not None:  # each client's batch gradient: no clipping
                pieces, losses = self.chain.backprops(current, self.buffers, x, y, eb)
                grads = self.chain.clipped_sums(pieces, self.chain.materialise(pieces), mask)
                value = (losses * mask).sum(dim=1)
            else:
                grads, value = self._call(current, x, y, mask, eb)
            # As train_locally: the step's loss (divided by B_e) times B_e, in Python floats.
            for k, loss, batch in zip(active, value.tolist(), batches, strict=True):
                total_loss[k] += loss * expected[k]
                seen[k] += len(batch)
            for n in self.names:
                g = grads[n]
                if settings.momentum != 0:
                    # torch.optim.SGD: the buffer starts as the first gradient (t = 0,
                    # when every client is active), then buf = momentum * buf + g.
                    if t == 0:
                        momentum[n] = g.clone()
                        g = momentum[n]
                    else:
                        buf = momentum[n] if rows is None else momentum[n][rows]
                        g = buf.mul(settings.momentum).add(g)
                        if rows is None:
                            momentum[n] = g
                        else:
                            momentum[n].index_copy_(0, rows, g)
                updated = current[n].add(g, alpha=-lr)
                if mu > 0:  # FedProx: w <- w - lr mu (w - w_global), as train_locally
                    base = anchor[n] if rows is None else anchor[n][rows]
                    updated = updated.sub(updated - base, alpha=lr * mu)
                if rows is None:
                    params[n] = updated
                else:
                    params[n].index_copy_(0, rows, updated)
        # Each client's weights are views of one CPU copy of the stacked parameters.
        trained = {n: params[n].detach().to("cpu", copy=True).unbind(0) for n in self.names}
        results = []
        for k, member in enumerate(members):
            state = {
                key: trained[key][k]
                if key in trained
                else member.initial_state[key].detach().to("cpu", copy=True)
                for key in self.keys
            }
            results.append(
                LocalTrainingResult(
                    state_dict=state,
                    num_examples=sizes[k],
                    mean_loss=total_loss[k] / max(seen[k], 1),
                    steps=steps[k],
                )
            )
        return results

    def _private_gradients(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        mask: Tensor,
        eb: Tensor,
        clip: Tensor,
        stds: Sequence[float],
        generators: Sequence[torch.Generator | None],
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Clipped, summed, noised per-example gradients (Opacus's DPOptimizer, per client).

        Also returns each client's batch loss divided by ``B_e``.
        """
        count, width = mask.shape
        if self.chain is not None:
            pieces, losses = self.chain.backprops(params, self.buffers, x, y, eb)
            norms, materialised = self.chain.norms(pieces)
            factor = (clip[:, None] / (norms + _CLIP_EPSILON)).clamp(max=1.0) * mask
            grads = self.chain.clipped_sums(pieces, materialised, factor)
        else:
            per_example, losses = self._call(params, x, y, eb)
            # Opacus: the norm of the per-parameter norms, then min(1, c / (norm + 1e-6)).
            norms = torch.stack(
                [per_example[n].reshape(count, width, -1).norm(2, dim=-1) for n in self.names],
                dim=-1,
            ).norm(2, dim=-1)
            factor = (clip[:, None] / (norms + _CLIP_EPSILON)).clamp(max=1.0) * mask
            grads = {n: torch.einsum("kb,kb...->k...", factor, per_example[n]) for n in self.names}
        if any(g is not None for g in generators):
            for run in self.noise_runs:
                shapes = [grads[n].shape[1:] for n in run]
                sizes = [shape.numel() for shape in shapes]
                # Opacus's _generate_noise: one draw per parameter, no dtype given; a run
                # of parameters in one draw holds the same numbers (see _noise_runs).
                noise = torch.stack(
                    [
                        torch.normal(0, std, size=(sum(sizes),), generator=g, device=self.device)
                        if g is not None
                        else torch.zeros(sum(sizes), device=self.device)
                        for g, std in zip(generators, stds, strict=True)
                    ]
                )
                for n, shape, part in zip(run, shapes, noise.split(sizes, dim=1), strict=True):
                    grads[n] = grads[n] + part.reshape(count, *shape)
        return grads, (losses * mask).sum(dim=1)


def _noise_runs(model: nn.Module, device: torch.device) -> list[list[str]]:
    """The parameters, in order, in runs whose Gaussian noise one draw can give.

    Opacus draws each parameter's noise from the client's generator in turn, a call per
    parameter and client: 600 calls a step for 100 clients of the MLP. On the CPU, torch
    fills a tensor of 16 or more normals 16 at a time from as many uniforms, redrawing
    the last 16 when the size is not a multiple of 16; so consecutive draws of sizes
    that are multiples of 16, then one of any size >= 16, consume the generator exactly
    as one draw of their total and give the same numbers
    (``tests/fedmodel/training/test_batched_training.py`` checks it). Elsewhere, and for
    a parameter of fewer than 16 values, each parameter is its own run.
    """
    runs: list[list[str]] = []
    merge = device.type == "cpu"
    open_run = False  # whether the last run may take the next parameter
    for name, parameter in model.named_parameters():
        size = parameter.numel()
        if merge and open_run and size >= 16:
            runs[-1].append(name)
        else:
            runs.append([name])
        open_run = merge and size >= 16 and size % 16 == 0
    return runs


# A parameterised layer after the backward pass: its name, the module, the gradient of its
# output and what its per-example gradients are computed from (unfolded or plain input).
_Piece = tuple[str, nn.Module, Tensor, Tensor]


class _LayerChain:
    """Per-example gradients of a built-in model the way Opacus's hooks get them, for a cohort.

    ``vmap(grad)`` over examples turns every conv into a grouped conv with layout copies
    and materialises each example's gradient of every parameter (the hidden linear layer
    of the small MNIST CNN is 100k of its 106k; all of an MLP's are linear). Instead,
    one forward pass of the whole
    cohort (each client's weights applied with batched matrix products: unfolded inputs
    for convs, Opacus's ``unfold`` + ``einsum``), one backward pass to the layers'
    outputs only (the loss is a sum of per-example terms and no layer mixes examples,
    so each example's output gradient is its own), and then per layer:

    - Conv2d: each example's weight gradient ``G_b U_b^T`` (small: ``O x C k k``) and
      bias gradient, materialised;
    - Linear: never materialised: an example's gradient is the outer product
      ``g_b a_b^T``, whose norm is ``|g_b| |a_b|`` (Goodfellow 2015, "ghost" norms), and
      the clipped sum is one product ``(f g)^T a`` per client;
    - GroupNorm: the affine weight's ``sum(G * normalised)`` and bias's ``sum(G)``.

    The same clipping (the norm over all parameters, Opacus's factor) and sums as the
    ``vmap`` path, to floating-point rounding (``tests/fedmodel/training/
    test_batched_training.py`` checks 1e-12 in float64 against ``train_locally``). Used
    for models whose forward is a known chain of such modules (:class:`~fedmodel.models.
    cnn.CNN`, :class:`~fedmodel.models.mlp.MLP`); anything else keeps ``vmap``.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], unsqueeze: bool) -> None:
        self.layers = layers
        self.unsqueeze = unsqueeze

    @classmethod
    def of(cls, model: nn.Module, names: Sequence[str]) -> _LayerChain | None:
        from fedmodel.models.cnn import CNN
        from fedmodel.models.mlp import MLP

        # Only models whose forward is known to be exactly their Sequentials in order.
        if type(model) is CNN and type(model).forward is CNN.forward:
            prefixes, unsqueeze = ("features", "head"), True
        elif type(model) is MLP and type(model).forward is MLP.forward:
            prefixes, unsqueeze = ("layers",), False
        else:
            return None
        layers = []
        for prefix in prefixes:
            sequence = getattr(model, prefix)
            if type(sequence) is not nn.Sequential:
                return None
            for name, module in sequence.named_children():
                if not _supported(module):
                    return None
                layers.append((f"{prefix}.{name}", module))
        owned = [f"{name}.{p}" for name, module in layers for p, _ in module.named_parameters()]
        if sorted(owned) != sorted(names):
            return None
        return cls(layers, unsqueeze=unsqueeze)

    def backprops(
        self,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        eb: Tensor,
    ) -> tuple[list[_Piece], Tensor]:
        """Each parameterised layer's (name, module, output gradient, saved input) and
        each example's loss divided by its client's ``B_e``, shape ``(K, W)``."""
        count, width = y.shape
        a = x.reshape(count * width, *x.shape[2:])
        if self.unsqueeze and a.dim() == 3:  # CNN.forward: (N, H, W) gets a channel
            a = a.unsqueeze(1)
        saved: list[tuple[str, nn.Module, Tensor]] = []
        outputs: list[Tensor] = []
        for name, module in self.layers:
            if isinstance(module, nn.Conv2d):
                height = _out_size(a.shape[2], module, 0)
                side = _out_size(a.shape[3], module, 1)
                bias = params[f"{name}.bias"] if module.bias is not None else None
                if outputs:  # its input's gradient is needed: a conv grouped by client
                    # (forward and backward ~4x faster than unfold + matmul + fold); the
                    # unfolded input, without gradient, gives the per-example gradients.
                    columns = nn.functional.unfold(
                        a.detach(), module.kernel_size, padding=module.padding, stride=module.stride
                    ).reshape(count, width, -1, height * side)
                    channels, rest = a.shape[1], a.shape[2:]
                    grouped = a.reshape(count, width, channels, *rest).transpose(0, 1)
                    out = nn.functional.conv2d(
                        grouped.reshape(width, count * channels, *rest),
                        params[f"{name}.weight"].reshape(
                            count * module.out_channels, channels, *module.kernel_size
                        ),
                        None if bias is None else bias.reshape(-1),
                        stride=module.stride,
                        padding=module.padding,
                        groups=count,
                    )
                    out = out.reshape(width, count, module.out_channels, height, side)
                    a = out.transpose(0, 1).reshape(
                        count * width, module.out_channels, height, side
                    )
                    saved.append((name, module, columns))
                else:  # the first layer: unfolded once, for its output and its gradients
                    unfolded = nn.functional.unfold(
                        a, module.kernel_size, padding=module.padding, stride=module.stride
                    )  # (K W, C k k, L)
                    weight = params[f"{name}.weight"].reshape(count, module.out_channels, -1)
                    columns = unfolded.reshape(count, width, -1, height * side)
                    out = torch.matmul(weight[:, None], columns)  # (K, W, O, L)
                    if bias is not None:
                        out = out + bias[:, None, :, None]
                    a = out.reshape(count * width, module.out_channels, height, side)
                    saved.append((name, module, columns.detach()))
            elif isinstance(module, nn.Linear):
                inputs = a.reshape(count, width, -1)
                out = torch.matmul(inputs, params[f"{name}.weight"].transpose(1, 2))
                if module.bias is not None:
                    out = out + params[f"{name}.bias"][:, None, :]
                a = out.reshape(count * width, -1)
                saved.append((name, module, inputs.detach()))
            elif isinstance(module, nn.GroupNorm):
                if module.num_channels // module.num_groups * math.prod(a.shape[2:]) == 1:
                    # One value per group: the vmap path (a batch of one) refuses it here.
                    raise ValueError(
                        f"{name}: GroupNorm over one value per group (input {tuple(a.shape[1:])})"
                    )
                normalised = nn.functional.group_norm(a, module.num_groups, eps=module.eps)
                if not module.affine:
                    a = normalised
                    continue
                shape = (count, width, module.num_channels, *([1] * (a.dim() - 2)))
                scaled = normalised.reshape(count, width, *a.shape[1:])
                scaled = scaled * params[f"{name}.weight"].reshape(shape[0], 1, *shape[2:])
                scaled = scaled + params[f"{name}.bias"].reshape(shape[0], 1, *shape[2:])
                a = scaled.reshape(count * width, *a.shape[1:])
                kept = normalised.detach().reshape(count, width, *a.shape[1:])
                saved.append((name, module, kept))
            else:
                a = module(a)
                continue
            if not outputs:  # the first layer's output: where the graph starts
                a.requires_grad_(True)
            outputs.append(a)
        losses = nn.functional.cross_entropy(a, y.reshape(-1), reduction="none")
        losses = losses.reshape(count, width) / eb[:, None]
        gradients = torch.autograd.grad(losses.sum(), outputs)
        pieces = [
            (name, module, gradient, kept)
            for (name, module, kept), gradient in zip(saved, gradients, strict=True)
        ]
        return pieces, losses.detach()

    @staticmethod
    def _per_example(
        module: nn.Module, gradient: Tensor, kept: Tensor, count: int, width: int
    ) -> dict[str, Tensor]:
        """Materialised per-example gradients ``(K, W, ...)`` of a conv or GroupNorm."""
        if isinstance(module, nn.Conv2d):
            g = gradient.reshape(count, width, module.out_channels, -1)  # (K, W, O, L)
            out = {"weight": torch.matmul(g, kept.transpose(2, 3))}  # (K, W, O, C k k)
            if module.bias is not None:
                out["bias"] = g.sum(dim=3)
            return out
        g = gradient.reshape(kept.shape)  # GroupNorm: (K, W, C, ...), summed over space
        dims = tuple(range(3, g.dim()))
        return {"weight": (g * kept).sum(dim=dims), "bias": g.sum(dim=dims)}

    def materialise(self, pieces: list[_Piece]) -> dict[str, Tensor]:
        """The per-example gradients of the convs and GroupNorms (not of Linear layers),
        ``(K, W, ...)``, for :meth:`norms` and :meth:`clipped_sums`."""
        materialised: dict[str, Tensor] = {}
        for name, module, gradient, kept in pieces:
            if not isinstance(module, nn.Linear):
                count, width = kept.shape[0], kept.shape[1]
                for part, value in self._per_example(module, gradient, kept, count, width).items():
                    materialised[f"{name}.{part}"] = value
        return materialised

    def norms(self, pieces: list[_Piece]) -> tuple[Tensor, dict[str, Tensor]]:
        """Each example's gradient norm over every parameter, shape ``(K, W)``, and the
        per-example gradients it materialised (:meth:`materialise`)."""
        squares = []
        for _, module, gradient, kept in pieces:
            if isinstance(module, nn.Linear):
                count, width = kept.shape[0], kept.shape[1]
                g = gradient.reshape(count, width, -1)
                g2 = g.square().sum(dim=2)
                squares.append(g2 * kept.square().sum(dim=2))
                if module.bias is not None:
                    squares.append(g2)
        materialised = self.materialise(pieces)
        for value in materialised.values():
            count, width = value.shape[0], value.shape[1]
            squares.append(value.reshape(count, width, -1).square().sum(dim=2))
        return torch.stack(squares, dim=-1).sum(dim=-1).sqrt(), materialised

    @staticmethod
    def clipped_sums(
        pieces: list[_Piece], materialised: dict[str, Tensor], factor: Tensor
    ) -> dict[str, Tensor]:
        """Each client's sum of its examples' gradients times ``factor`` (K, W)."""
        grads: dict[str, Tensor] = {}
        for name, module, gradient, kept in pieces:
            count, width = factor.shape
            if isinstance(module, nn.Linear):
                g = gradient.reshape(count, width, -1) * factor[:, :, None]
                grads[f"{name}.weight"] = torch.matmul(g.transpose(1, 2), kept)
                if module.bias is not None:
                    grads[f"{name}.bias"] = g.sum(dim=1)
                continue
            for part in ("weight", "bias"):
                key = f"{name}.{part}"
                if key not in materialised:
                    continue
                value = materialised[key]
                summed = torch.einsum("kw,kw...->k...", factor, value)
                grads[key] = summed.reshape(count, *getattr(module, part).shape)
        return grads


def _supported(module: nn.Module) -> bool:
    """Whether :class:`_LayerChain` computes ``module`` exactly as its own forward does."""
    if isinstance(module, nn.Conv2d):
        return (
            type(module) is nn.Conv2d
            and module.groups == 1
            and module.dilation == (1, 1)
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )
    if isinstance(module, nn.Flatten):
        return type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1
    return type(module) in (
        nn.Linear,
        nn.GroupNorm,
        nn.ReLU,
        nn.Tanh,
        nn.MaxPool2d,
        nn.AvgPool2d,
        nn.Identity,
    )


def _out_size(size: int, conv: nn.Conv2d, dim: int) -> int:
    return (size + 2 * conv.padding[dim] - conv.kernel_size[dim]) // conv.stride[dim] + 1


def _tensors(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of every example: a plain ``TensorDataset``'s own tensors, else each
    example fetched and stacked."""
    if is_plain_tensor_dataset(dataset) and len(dataset.tensors) == 2:  # type: ignore[attr-defined]
        x, y = dataset.tensors  # type: ignore[attr-defined]
        return x, y
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return (
        torch.stack([torch.as_tensor(x) for x, _ in items]),
        torch.as_tensor(np.asarray([int(y) for _, y in items]), dtype=torch.long),
    )


def _batches(
    member: CohortMember, num_examples: int, settings: TrainingSettings
) -> list[list[int]]:
    """The example indices of each of the member's steps, as :func:`train_locally` draws them.

    The same generator, seeded alike, consumed in the same order: Poisson batches at
    rate ``1 / ceil(N / B)`` (``torch.rand(n) < q``, Opacus's draw) under DP, torch's
    shuffling ``DataLoader`` without (whose iterator also draws a base seed each epoch).
    """
    generator = torch.Generator().manual_seed(member.seed)
    steps = steps_per_epoch_for(num_examples, settings.batch_size)
    plan: list[list[int]] = []
    if settings.dp:
        sampler = PoissonBatchSampler(
            num_examples=num_examples,
            steps=steps,
            sample_rate=1.0 / steps,
            bernoulli=lambda n, p: torch.rand(n, generator=generator) < p,
        )
        for _ in range(settings.epochs):
            plan += list(sampler)
        return plan
    # range(n) stands in for the examples: torch's sampler only needs their count.
    loader = DataLoader(
        range(num_examples),  # type: ignore[arg-type]
        batch_size=settings.batch_size,
        shuffle=True,
        generator=generator,
    )
    for _ in range(settings.epochs):
        plan += batch_indices(loader)
    return plan
