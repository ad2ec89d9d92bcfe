"""``fedmodel explain RUN_DIR``: attribution maps of a run's global model (Captum).

Computed on the server's test set only, never on client data (see :mod:`fedmodel.explain`):
for a built-in dataset its test split, for custom data the run config's ``test-data``; a
run without one is refused (exit code 2). Writes into ``RUN_DIR/explain/``:

- ``<method>-attributions.npy`` (and ``-inputs``, ``-labels``, ``-indices``): the raw
  attributions of the explained test examples, shape ``(N, *input_shape)``;
- images: ``<method>-maps.png``, one row per class, the examples and their attribution maps;
- tabular data: ``<method>-importance.png``, mean absolute attribution per feature.

Methods: Integrated Gradients (Sundararajan et al. 2017, the default), GradientSHAP and
Kernel SHAP (Lundberg & Lee 2017), LIME (Ribeiro et al. 2016).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from simulations.cli.common import CommandFailed

if TYPE_CHECKING:
    from fedmodel.explain import Explanation

METHODS = ("integrated-gradients", "gradient-shap", "kernel-shap", "lime")  # fedmodel.explain's


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``explain`` to ``fedmodel``'s subcommands."""
    explain = commands.add_parser(
        "explain",
        help="attribution maps of a run's global model on the server's test set (Captum)",
        description="Attributions of a run folder's model.pt on the server's test set only "
        '(never client data); written to RUN_DIR/explain/. Needs pip install ".[explain]".',
    )
    explain.set_defaults(run=run)
    explain.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (config.json, model.pt)")
    explain.add_argument(
        "--method", choices=METHODS, default="integrated-gradients", help="attribution method"
    )
    explain.add_argument(
        "--per-class", type=int, default=3, help="test examples explained per class (default 3)"
    )
    explain.add_argument("--seed", type=int, default=0, help="seed of the sampling methods")


def run(args: argparse.Namespace) -> int:
    """Explain ``args.run_dir``'s model; print the files written."""
    from fedmodel.explain import MissingExtra, explain_run, load_run_model, save_explanation

    if args.per_class < 1:
        raise ValueError(f"--per-class must be >= 1, got {args.per_class}")
    model = load_run_model(args.run_dir)
    try:
        explanation = explain_run(
            model, method=args.method, per_class=args.per_class, seed=args.seed
        )
    except MissingExtra as error:  # one line, naming the extra to install
        raise CommandFailed(str(error), code=2) from error
    folder = Path(args.run_dir) / "explain"
    paths = save_explanation(explanation, folder)
    if model.is_image:
        paths.append(plot_maps(explanation, folder / f"{args.method}-maps.png"))
    else:
        paths.append(plot_importance(explanation, folder / f"{args.method}-importance.png"))
    print(
        f"{args.method}: {len(explanation.labels)} test examples of the server's test set "
        "(no client data)"
    )
    for path in paths:
        print(f"wrote {path}")
    return 0


def plot_maps(explanation: Explanation, path: Path) -> Path:
    """A grid: one row per class, each example's image and its attribution map."""
    import numpy as np
    from matplotlib.figure import Figure

    labels = explanation.labels
    classes = sorted(set(labels.tolist()))
    per_row = max(int(np.sum(labels == c)) for c in classes)
    figure = Figure(figsize=(2.0 * per_row, 1.1 * len(classes) + 0.6))
    axes = figure.subplots(len(classes), 2 * per_row, squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    for row, label in enumerate(classes):
        for column, i in enumerate(np.flatnonzero(labels == label)):
            if explanation.attributions[i].ndim == 3:  # (C, H, W): channels summed
                values = explanation.attributions[i].sum(axis=0)
                image = explanation.inputs[i].mean(axis=0)
            else:
                values = explanation.attributions[i]
                image = explanation.inputs[i]
            bound = float(np.abs(values).max()) or 1.0
            axes[row, 2 * column].imshow(image, cmap="gray")
            axes[row, 2 * column + 1].imshow(values, cmap="bwr", vmin=-bound, vmax=bound)
        axes[row, 0].set_title(f"class {label}", fontsize=7, loc="left")
    figure.suptitle(f"{explanation.method}: input | attribution (red +, blue -)", fontsize=9)
    figure.savefig(path, dpi=100)
    return path


def plot_importance(explanation: Explanation, path: Path) -> Path:
    """A bar chart of each feature's mean absolute attribution over the examples."""
    import numpy as np
    from matplotlib.figure import Figure

    values = np.abs(explanation.attributions.reshape(len(explanation.labels), -1)).mean(axis=0)
    figure = Figure(figsize=(max(4.0, 0.25 * len(values)), 3.0))
    axis = figure.subplots()
    axis.bar(np.arange(len(values)), values)
    axis.set_xlabel("feature")
    axis.set_ylabel("mean |attribution|")
    axis.set_title(f"{explanation.method}: feature importance (server test set)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
