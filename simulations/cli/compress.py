"""``fedmodel compress``: prune (and int8-quantise) a run's ``model.pt``, sweep the sparsity.

Writes into ``RUN_DIR/compressed/``: one model per sparsity of the sweep (``--prune``
included), its int8 version with ``--quantize int8``, and with ``--finetune-rounds N`` the
``--prune`` model fine-tuned by N federated rounds; ``compression.md`` / ``.csv`` (kind,
sparsity, non-zero parameters, file size, test accuracy on the run's test set) and
``accuracy_vs_sparsity.png``.

Fine-tuning runs :func:`simulations.simulate` with the run's own config and clients,
``initial-model`` = the pruned model and the run folder ``compressed/finetune-<s>/`` (a new
one, ``finetune-<s>-2/`` ..., if it exists); the
pruning mask is applied to the global model it ends with, so every pruned weight is zero
again. Under DP those rounds spend privacy of their own, accounted in that run's ledgers.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from typing import Any

DEFAULT_SWEEP = "0,0.5,0.8,0.9,0.95"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``compress`` to ``fedmodel``'s subcommands."""
    compress = commands.add_parser(
        "compress", help="prune / int8-quantise a run's model.pt and tabulate size and accuracy"
    )
    compress.set_defaults(run=run)
    compress.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (holds model.pt)")
    compress.add_argument(
        "--prune",
        type=float,
        default=0.9,
        metavar="SPARSITY",
        help="fraction of Linear/Conv weights to zero (global magnitude pruning; default 0.9)",
    )
    compress.add_argument(
        "--quantize",
        choices=["int8", "none"],
        default="none",
        help="int8: also dynamic int8 quantisation of the linear layers (default none)",
    )
    compress.add_argument(
        "--sweep",
        default=DEFAULT_SWEEP,
        metavar="S1,S2,...",
        help=f"sparsities to tabulate and plot besides --prune (default {DEFAULT_SWEEP})",
    )
    compress.add_argument(
        "--finetune-rounds",
        type=int,
        default=0,
        metavar="N",
        help="fine-tune the --prune model with N federated rounds of the run's config "
        "(mask re-applied to the result; default 0: none)",
    )
    compress.add_argument("--verbose", action="store_true", help="also show Flower's log")


def run(args: argparse.Namespace) -> int:
    """Compress, tabulate, plot; prints the table and the folder (exit 0)."""
    folder = Path(args.run_dir)
    sparsities = _sparsities(args.sweep, args.prune)
    if args.finetune_rounds < 0:
        raise ValueError(f"--finetune-rounds {args.finetune_rounds} must be >= 0")
    document = _run_document(folder)

    from fedmodel.config import RunConfig
    from fedmodel.data import load_test_split
    from fedmodel.data.datasets import DATASETS

    config = RunConfig.from_mapping(document["run_config"])
    if DATASETS.get(config.dataset).own_data:
        raise ValueError(f"{folder}: custom-data runs are not supported (dataset = 'custom')")
    test = load_test_split(config, num_clients=document.get("num_nodes"))
    if test is None:
        raise ValueError(f"{folder}: the run's dataset has no test split to measure accuracy on")
    out = folder / "compressed"
    out.mkdir(exist_ok=True)
    rows: list[dict[str, Any]] = []
    for sparsity in sparsities:
        model = _load_model(folder / "model.pt", config, document)
        rows += _compressed(model, sparsity, test, out, quantize=args.quantize == "int8")
        if sparsity == args.prune and args.finetune_rounds > 0:
            rows += _finetuned(args, config, document, model, sparsity, test, out)
    _write_table(out, rows)
    from simulations.plots import plot_compression

    plot = plot_compression(out / "accuracy_vs_sparsity.png", rows)
    print(_markdown(rows), end="")
    print(f"compressed models, table and plot: {out} ({plot.name})")
    return 0


def _sparsities(sweep: str, prune: float) -> list[float]:
    try:
        values = {float(part) for part in sweep.split(",") if part.strip()}
    except ValueError as error:
        raise ValueError(f"--sweep {sweep!r}: expected comma-separated numbers") from error
    values.add(prune)
    bad = [v for v in sorted(values) if not 0.0 <= v < 1.0]
    if bad:
        raise ValueError(f"sparsity {bad[0]:g} must be in [0, 1)")
    return sorted(values)


def _run_document(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run folder")
    for name in ("config.json", "model.pt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: not a finished run folder (no {name})")
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def _load_model(path: Path, config: Any, document: dict[str, Any]) -> Any:
    import torch

    from fedmodel.models import build_model, model_settings

    model = build_model(
        config.model,
        input_shape=document["input_shape"],
        num_classes=document["num_classes"],
        settings=model_settings(config),
    )
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def _compressed(
    model: Any, sparsity: float, test: Any, out: Path, *, quantize: bool, kind: str = "pruned"
) -> list[dict[str, Any]]:
    """Prune ``model`` in place (unless ``kind`` is "fine-tuned"), save, measure; + int8."""
    from fedmodel.model_compression import prune_model

    if kind == "pruned" and sparsity > 0:
        prune_model(model, sparsity)
    suffix = "" if kind == "pruned" else "-finetuned"
    rows = [_measure(model, f"model-sparsity-{sparsity:.2f}{suffix}.pt", kind, sparsity, test, out)]
    if quantize:
        from fedmodel.model_compression import quantize_int8

        name = f"model-sparsity-{sparsity:.2f}{suffix}-int8.pt"
        rows.append(_measure(quantize_int8(model), name, f"{kind} + int8", sparsity, test, out))
    return rows


def _measure(model: Any, name: str, kind: str, sparsity: float, test: Any, out: Path) -> dict:
    from fedmodel.model_compression import count_nonzero, save_state, weight_sparsity
    from fedmodel.training import evaluate

    size = save_state(model, out / name)
    _, accuracy = evaluate(model, test)
    nonzero, total = count_nonzero(model)
    measured = sparsity if kind.endswith("int8") else weight_sparsity(model)
    return {
        "kind": kind,
        "sparsity": sparsity,
        "weight_sparsity": round(measured, 6),
        "nonzero": nonzero,
        "parameters": total,
        "file": name,
        "bytes": size,
        "accuracy": accuracy,
    }


def _finetuned(
    args: argparse.Namespace,
    config: Any,
    document: dict[str, Any],
    model: Any,
    sparsity: float,
    test: Any,
    out: Path,
) -> list[dict[str, Any]]:
    """N rounds of the run's config from the pruned model; the mask re-applied to the result."""
    import torch

    from fedmodel.model_compression import apply_mask, weight_mask
    from simulations.simulate import simulate

    mask = weight_mask(model)
    run_dir, n = out / f"finetune-{sparsity:.2f}", 1
    while run_dir.exists():  # an earlier fine-tuning run (its ledgers) is kept
        n += 1
        run_dir = out / f"finetune-{sparsity:.2f}-{n}"
    tuned = config.replace(
        num_server_rounds=args.finetune_rounds,
        initial_model=str(out / f"model-sparsity-{sparsity:.2f}.pt"),
        run_dir=str(run_dir),
        resume=False,
    )
    result = simulate(tuned, num_clients=document.get("num_nodes"), verbose=args.verbose)
    state = torch.load(result.run_dir / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(apply_mask(state, mask))
    return _compressed(
        model, sparsity, test, out, quantize=args.quantize == "int8", kind="fine-tuned"
    )


COLUMNS = [
    "kind",
    "sparsity",
    "weight_sparsity",
    "nonzero",
    "parameters",
    "bytes",
    "accuracy",
    "file",
]


def _write_table(out: Path, rows: list[dict[str, Any]]) -> None:
    from fedmodel.atomic_files import write_atomically

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(out / "compression.csv", text.getvalue())
    write_atomically(out / "compression.md", _markdown(rows))


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | sparsity | non-zero parameters | file size (bytes) | test accuracy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['sparsity']:g} | {r['nonzero']:,} / {r['parameters']:,} "
            f"| {r['bytes']:,} | {r['accuracy']:.4f} |"
        )
    return "\n".join(lines) + "\n"
