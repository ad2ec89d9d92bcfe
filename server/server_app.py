"""The Flower ServerApp: FedAvg over DP-SGD clients, central evaluation, the run folder."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedmodel.config import RunConfig
from fedmodel.data import load_splits
from fedmodel.models import build_model
from fedmodel.records import federation_to_record
from fedmodel.results import RoundMetrics, RunFolder, default_run_dir, privacy_header
from fedmodel.training import evaluate
from server.data_check import ExcludingGrid, check_client_data
from server.polling_grid import PromptGrid
from server.strategies.client_tracking import ClientTracking

PER_CLIENT_LOG_LIMIT = 5

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of FedAvg and write the run folder."""
    config = RunConfig.from_mapping(context.run_config)  # validated before anything else
    random.seed(config.seed)  # Flower samples clients with the global `random`
    torch.manual_seed(config.seed)

    model_config, extra = ConfigRecord(), {}
    every_node_holds_out = False  # custom data: each usable node has a test split
    if config.dataset == "custom":
        # Custom data: ask every node before round 1; bad nodes are left out, named.
        checked = check_client_data(grid, config)
        for line in checked.report():
            print(line, flush=True)
        grid = ExcludingGrid(grid, excluded=checked.excluded)
        input_shape = checked.federation.input_shape
        num_classes = checked.federation.num_classes
        test = checked.test.train.dataset if checked.test is not None else None
        model_config = federation_to_record(checked.federation)
        extra["excluded_nodes"] = {str(node): why for node, why in checked.excluded.items()}
        every_node_holds_out = all(checked.held_out.get(n, False) for n in checked.ready)
    else:
        splits = load_splits(config, num_clients=len(list(grid.get_node_ids())))
        input_shape, num_classes, test = splits.input_shape, splits.num_classes, splits.test
    model = build_model(
        config.model,
        input_shape=input_shape,
        num_classes=num_classes,
        hidden_sizes=config.hidden_layer_sizes,
    )
    # Without a central test set the clients' own evaluation is the only measure; under
    # DP a client evaluates only on a held-out split (its training records' accuracy
    # would be a noise-free statistic of them), so only when every node has one.
    automatic = 1.0 if test is None and (not config.dp or every_node_holds_out) else 0.0
    fraction_evaluate = config.fraction_evaluate or automatic
    if test is None and not fraction_evaluate:
        print(
            "Evaluation off: no central test set, and under DP clients evaluate only on "
            "held-out splits, which not every node has",
            flush=True,
        )
    with _flower_log_level(logging.ERROR):  # FedAvg warns when fraction-evaluate is 0: intended
        fedavg = FedAvg(
            fraction_train=config.fraction_train,
            fraction_evaluate=fraction_evaluate,
            # A round cannot keep k updates unless k nodes are connected and sampled.
            min_train_nodes=config.min_train_replies,
            min_evaluate_nodes=1 if fraction_evaluate > 0 else 0,
            min_available_nodes=config.min_train_replies,
        )
    strategy = ClientTracking(
        fedavg,
        require_ledger=config.dp,
        min_train_replies=config.min_train_replies,
        round_timeout=config.round_timeout,
    )
    folder = RunFolder(config.run_dir or default_run_dir(config))
    folder.create(
        config,
        extra={
            "num_nodes": len(list(grid.get_node_ids())),
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            **extra,
        },
    )
    print(privacy_header(config), flush=True)

    clock = {"last": time.perf_counter()}
    saved_ledgers: dict[str, dict] = {}

    def evaluate_and_record(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, test) if test is not None else (math.nan,) * 2
        if server_round == 0:
            clock["last"] = time.perf_counter()
            return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})
        epsilons = strategy.epsilons() or [0.0]
        train_metrics = strategy.last_train_metrics
        client_metrics = strategy.last_evaluate_metrics
        metrics = RoundMetrics(
            round=server_round,
            test_accuracy=accuracy,
            test_loss=loss,
            epsilon_max=max(epsilons) if config.dp else math.inf,
            epsilon_mean=sum(epsilons) / len(epsilons) if config.dp else math.inf,
            clients_trained=strategy.last_round_trained,
            clients_failed=len(strategy.last_round_failures),
            # Under DP clients send no training loss (a noise-free statistic of records).
            train_loss=_metric(train_metrics, "train-loss"),
            seconds=time.perf_counter() - clock["last"],
            client_accuracy=_metric(client_metrics, "eval-accuracy"),
            client_loss=_metric(client_metrics, "eval-loss"),
        )
        folder.add_round(metrics)
        folder.save_model(arrays.to_torch_state_dict())
        for client, ledger in strategy.ledgers.items():
            if saved_ledgers.get(client) is not ledger:  # new this round: keep rounds O(sampled)
                folder.save_ledger(client, ledger)
                saved_ledgers[client] = ledger
        print(metrics.line(num_rounds=config.num_server_rounds, dp=config.dp), flush=True)
        if config.dp and server_round == 1:
            print(f"  {strategy.noise_source_line()}", flush=True)
        # Per-client ε on the log for small federations; always in privacy/<client>.json.
        if config.dp and 0 < len(strategy.last_round_epsilons) <= PER_CLIENT_LOG_LIMIT:
            print(f"  {strategy.epsilon_line()}", flush=True)
        for failure in strategy.last_round_failures:
            print(f"  failed: {failure}", flush=True)
        if not strategy.last_round_updated:
            print(
                f"  global model unchanged: {strategy.last_round_trained} of at least "
                f"{config.min_train_replies} updates (run-config min-train-replies)",
                flush=True,
            )
        clock["last"] = time.perf_counter()
        return MetricRecord({"test-loss": loss, "test-accuracy": accuracy})

    strategy.start(
        grid=PromptGrid(grid),
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=config.num_server_rounds,
        timeout=config.round_timeout,
        evaluate_fn=evaluate_and_record,
        train_config=ConfigRecord(dict(model_config)),
        evaluate_config=ConfigRecord(dict(model_config)),
    )
    print(f"Run folder: {folder.path}", flush=True)


def _metric(metrics: MetricRecord | None, key: str) -> float:
    """An aggregated client metric of this round, or nan when no client evaluated."""
    return float(metrics[key]) if metrics and key in metrics else math.nan  # type: ignore[arg-type]


@contextlib.contextmanager
def _flower_log_level(level: int) -> Iterator[None]:
    logger = logging.getLogger("flwr")
    previous = logger.level
    logger.setLevel(max(level, previous))
    try:
        yield
    finally:
        logger.setLevel(previous)
