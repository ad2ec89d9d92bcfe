"""Attributions of a run's global model on the server's test set (Captum).

Explanations are computed on the **server's test set only, never on client data**: for a
built-in dataset its test split (:func:`fedmodel.data.load_test_split`), for custom data the
run config's ``test-data``. A run without a test set is refused (``ValueError``). Client
records stay on the clients; attributions of them would be a noise-free statistic of the
records DP-SGD protects.

Methods (``METHODS``):

- ``integrated-gradients``: Integrated Gradients (Sundararajan, Taly & Yan 2017, "Axiomatic
  Attribution for Deep Networks"), from an all-zero baseline; its attributions sum to the
  output's difference from the baseline (completeness).
- ``gradient-shap``: expected gradients over baselines drawn from the test set, an
  approximation of SHAP values (Lundberg & Lee 2017, "A Unified Approach to Interpreting
  Model Predictions").
- ``kernel-shap``: Kernel SHAP (Lundberg & Lee 2017), model-agnostic, per example.
- ``lime``: LIME (Ribeiro, Singh & Guestrin 2016, "Why Should I Trust You?"), a local linear
  surrogate per example.

Captum is an optional dependency, imported only when attributions are computed:
``pip install ".[explain]"``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fedmodel.config import RunConfig
from fedmodel.models import build_model, model_settings

METHODS = ("integrated-gradients", "gradient-shap", "kernel-shap", "lime")
DEFAULT_METHOD = "integrated-gradients"


@dataclass(frozen=True)
class RunModel:
    """A run folder's global model, its config and the server's test set.

    ``test`` holds the test examples as tensors: ``x`` of shape ``(N, *input_shape)``,
    ``y`` class ids.
    """

    config: RunConfig
    model: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def is_image(self) -> bool:
        """Whether one example is an image (``(C, H, W)`` or ``(H, W)``)."""
        return len(self.input_shape) >= 2


@dataclass(frozen=True)
class Explanation:
    """Attributions of chosen test examples: same shape as their inputs.

    ``indices`` are the examples' positions in the test set, ``labels`` their classes (the
    attributions are of the model's output for that class).
    """

    method: str
    inputs: np.ndarray
    attributions: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


class MissingExtra(ImportError):
    """Captum is not installed (the ``explain`` extra)."""


def _captum() -> Any:
    try:
        import captum.attr
    except ImportError as error:  # optional extra
        raise MissingExtra('fedmodel explain needs Captum: pip install ".[explain]"') from error
    return captum.attr


def load_run_model(run_dir: str | os.PathLike[str]) -> RunModel:
    """Rebuild a run folder's global model (``model.pt``) by name from its ``config.json``.

    The test set is the server's (see the module docstring), never client data.

    Raises
    ------
    ValueError
        ``run_dir`` is not a finished run folder, or the run has no test set.
    """
    path = Path(run_dir)
    config_path, model_path = path / "config.json", path / "model.pt"
    if not config_path.is_file():
        raise ValueError(f"{path}: not a run folder (no config.json)")
    if not model_path.is_file():
        raise ValueError(f"{path}: the run folder holds no model.pt (no round finished)")
    try:
        document = json.loads(config_path.read_text())
        config = RunConfig.from_mapping(document["run_config"])
        input_shape = tuple(int(n) for n in document["input_shape"])
        num_classes = int(document["num_classes"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{config_path}: not a run folder's config.json ({error})") from error
    model = build_model(
        config.model,
        input_shape=input_shape,
        num_classes=num_classes,
        settings=model_settings(config),
    )
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.eval()
    test = _server_test_set(config, num_nodes=document.get("num_nodes"))
    x, y = _tensors(test)
    return RunModel(config, model, input_shape, num_classes, x, y)


def _server_test_set(config: RunConfig, *, num_nodes: int | None) -> Dataset:
    """The server's central test set of ``config``'s run; never a client's data."""
    from fedmodel.data import DATASETS, load_test_split

    if DATASETS.get(config.dataset).own_data:
        from fedmodel.data.sources.loading import load_test_set

        source = load_test_set(config)
        test = source.train.dataset if source is not None else None
    else:
        test = load_test_split(config, num_clients=num_nodes)
    if test is None or len(test) == 0:  # type: ignore[arg-type]
        raise ValueError(
            "the run has no server test set to explain on (custom data: run-config "
            "'test-data'); explanations are never computed on client data"
        )
    return test


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        return tensors[0].float(), tensors[1].long()
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)  # type: ignore[arg-type]
    return torch.stack([torch.as_tensor(x) for x in xs]).float(), torch.as_tensor(ys).long()


def choose_examples(labels: torch.Tensor, *, per_class: int, num_classes: int) -> np.ndarray:
    """Indices of the first ``per_class`` test examples of every class, class by class."""
    y = labels.numpy()
    return np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(num_classes)]).astype(
        np.int64
    )


def feature_mask(input_shape: tuple[int, ...], *, patches: int = 8) -> torch.Tensor:
    """Groups of features for the perturbation methods: square patches of an image (about
    ``patches`` x ``patches`` of them, every channel together), each feature of a vector
    on its own. Shape ``(1, *input_shape)``.
    """
    if len(input_shape) < 2:
        return torch.arange(math.prod(input_shape)).reshape(1, *input_shape)
    height, width = input_shape[-2:]
    size_h, size_w = math.ceil(height / patches), math.ceil(width / patches)
    rows = torch.arange(height) // size_h
    cols = torch.arange(width) // size_w
    ids = rows[:, None] * math.ceil(width / size_w) + cols[None, :]
    return ids.expand(*input_shape).reshape(1, *input_shape).clone()


def attribute(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    method: str = DEFAULT_METHOD,
    background: torch.Tensor | None = None,
    n_steps: int = 64,
    n_samples: int = 200,
    seed: int = 0,
) -> torch.Tensor:
    """Attributions of ``model``'s output for class ``targets`` to each input feature.

    Parameters
    ----------
    model : nn.Module
        The model (put in eval mode); its output is one logit per class.
    inputs : torch.Tensor
        Examples, shape ``(N, *input_shape)``.
    targets : torch.Tensor
        The class explained for each example, shape ``(N,)``.
    method : str
        One of :data:`METHODS`: Integrated Gradients (Sundararajan et al. 2017; all-zero
        baseline, ``n_steps`` Gauss-Legendre points), GradientSHAP and Kernel SHAP (Lundberg
        & Lee 2017; GradientSHAP's baselines are ``background``), LIME (Ribeiro et al. 2016).
    background : torch.Tensor, optional
        Baseline examples for ``gradient-shap`` (default: the all-zero input).
    n_steps : int
        Integration points of Integrated Gradients.
    n_samples : int
        Samples per example of GradientSHAP (a tenth of it), Kernel SHAP and LIME.
    seed : int
        Seeds torch's generator for the sampling methods.

    Returns
    -------
    torch.Tensor
        The attributions, shape of ``inputs``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    attr = _captum()
    model.eval()
    torch.manual_seed(seed)
    inputs = inputs.float()
    zeros = torch.zeros_like(inputs)
    if method == "integrated-gradients":
        return (
            attr.IntegratedGradients(model)
            .attribute(inputs, baselines=zeros, target=targets, n_steps=n_steps)
            .detach()
        )
    if method == "gradient-shap":
        baselines = background if background is not None else zeros[:1]
        return (
            attr.GradientShap(model)
            .attribute(
                inputs,
                baselines=baselines.float(),
                target=targets,
                n_samples=max(n_samples // 10, 1),
            )
            .detach()
        )
    explainer = attr.KernelShap(model) if method == "kernel-shap" else attr.Lime(model)
    mask = feature_mask(tuple(inputs.shape[1:]))
    rows = [
        explainer.attribute(
            inputs[i : i + 1],
            baselines=zeros[i : i + 1],
            target=int(targets[i]),
            feature_mask=mask,
            n_samples=n_samples,
        ).detach()
        for i in range(len(inputs))
    ]
    return torch.cat(rows)


def explain_run(
    run: RunModel, *, method: str = DEFAULT_METHOD, per_class: int = 3, seed: int = 0
) -> Explanation:
    """Attributions of ``per_class`` test examples of every class for the run's model.

    Each example is explained for its true class. Server test set only (module docstring).
    """
    indices = choose_examples(run.test_y, per_class=per_class, num_classes=run.num_classes)
    inputs, labels = run.test_x[indices], run.test_y[indices]
    generator = torch.Generator().manual_seed(seed)
    background = run.test_x[torch.randperm(len(run.test_x), generator=generator)[:32]]
    values = attribute(run.model, inputs, labels, method=method, background=background, seed=seed)
    return Explanation(
        method=method,
        inputs=inputs.numpy(),
        attributions=values.numpy(),
        labels=labels.numpy(),
        indices=indices,
    )


def save_explanation(explanation: Explanation, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``<method>-attributions.npy`` (and the examples' ``-inputs``, ``-labels``,
    ``-indices`` ``.npy``) into ``folder``; returns the paths written.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("attributions", "inputs", "labels", "indices"):
        path = out / f"{explanation.method}-{name}.npy"
        np.save(path, getattr(explanation, name))
        paths.append(path)
    return paths


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "Explanation",
    "MissingExtra",
    "RunModel",
    "attribute",
    "choose_examples",
    "explain_run",
    "feature_mask",
    "load_run_model",
    "save_explanation",
]
