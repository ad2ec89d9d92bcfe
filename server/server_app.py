"""The Flower ServerApp: FedAvg over DP-SGD clients, central evaluation, the run folder."""

from __future__ import annotations

import math
import random
import time

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedmodel.config import RunConfig
from fedmodel.data import load_dataset
from fedmodel.models import build_model
from fedmodel.results import RoundMetrics, RunFolder, default_run_dir, privacy_header
from fedmodel.training import evaluate
from server.strategies.client_tracking import ClientTracking

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of FedAvg and write the run folder."""
    config = RunConfig.from_mapping(context.run_config)  # validated before anything else
    random.seed(config.seed)  # Flower samples clients with the global `random`
    torch.manual_seed(config.seed)

    splits = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed)
    model = build_model(
        config.model,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        hidden_sizes=config.hidden_layer_sizes,
    )
    strategy = ClientTracking(
        FedAvg(
            fraction_train=config.fraction_train,
            fraction_evaluate=config.fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1 if config.fraction_evaluate > 0 else 0,
            min_available_nodes=1,
        ),
        require_ledger=config.dp,
    )
    folder = RunFolder(config.run_dir or default_run_dir(config))
    folder.create(
        config,
        extra={
            "num_nodes": len(list(grid.get_node_ids())),
            "input_shape": list(splits.input_shape),
            "num_classes": splits.num_classes,
        },
    )
    print(privacy_header(config), flush=True)

    clock = {"last": time.perf_counter()}

    def evaluate_and_record(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = (
            evaluate(model, splits.test) if splits.test is not None else (math.nan,) * 2
        )
        if server_round == 0:
            clock["last"] = time.perf_counter()
            return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})
        epsilons = strategy.epsilons() or [0.0]
        train_metrics = strategy.last_train_metrics
        metrics = RoundMetrics(
            round=server_round,
            test_accuracy=accuracy,
            test_loss=loss,
            epsilon_max=max(epsilons) if config.dp else math.inf,
            epsilon_mean=sum(epsilons) / len(epsilons) if config.dp else math.inf,
            clients_trained=strategy.last_round_trained,
            clients_failed=len(strategy.last_round_failures),
            train_loss=float(train_metrics["train-loss"]) if train_metrics else math.nan,
            seconds=time.perf_counter() - clock["last"],
        )
        folder.add_round(metrics)
        folder.save_model(arrays.to_torch_state_dict())
        for client, ledger in strategy.ledgers.items():
            folder.save_ledger(client, ledger)
        print(metrics.line(num_rounds=config.num_server_rounds, dp=config.dp), flush=True)
        for failure in strategy.last_round_failures:
            print(f"  failed: {failure}", flush=True)
        clock["last"] = time.perf_counter()
        return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=config.num_server_rounds,
        evaluate_fn=evaluate_and_record,
    )
    print(f"Run folder: {folder.path}", flush=True)
