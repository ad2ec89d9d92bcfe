"""The Flower ServerApp: a chosen strategy over DP-SGD clients, central evaluation, run folder."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator

import torch
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedmodel.config import RunConfig
from fedmodel.data import DATASETS, data_shape, load_test_split
from fedmodel.models import build_model, model_settings
from fedmodel.records import federation_to_record
from fedmodel.results import RunFolder, default_run_dir, privacy_header
from fedmodel.results.write_behind import write_behind
from fedmodel.training.augmentation import check_input_shape
from server.checkpointing import RunCheckpoints
from server.data_check import ExcludingGrid, check_client_data
from server.polling_grid import PromptGrid
from server.round_recorder import RoundRecorder
from server.secure_aggregation import SecureAggregation
from server.strategies.by_name import build_strategy, check_federation_size, strategy_line
from server.strategies.client_tracking import ClientTracking
from server.strategies.user_level_dp import (
    UserBudgetReached,
    check_user_level_strategy,
    sampled_and_private,
    user_level_layer,
)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run ``num-server-rounds`` rounds of the run config's ``strategy``; write the run folder.

    The run folder's and checkpoints' files are written by a write-behind thread, in
    order, each atomic and durable (:mod:`fedmodel.results.write_behind`); all are on
    disk before this returns or raises.
    """
    with write_behind():
        _main(grid, context)


def _main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_mapping(context.run_config)  # validated before anything else
    random.seed(config.seed)  # Flower samples clients with the global `random`
    torch.manual_seed(config.seed)

    nodes = grid  # the runtime's own Grid: it may keep its nodes' state (checkpoints)
    model_config, extra = ConfigRecord(), {}
    every_node_holds_out = False  # custom data: each usable node has a test split
    client_sizes = None  # custom data: each usable node's training-set size (bound)
    if DATASETS.get(config.dataset).own_data:
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
        client_sizes = [checked.num_examples[n] for n in checked.ready if n in checked.num_examples]
    else:
        # The test split only: the server never featurizes (or reads) a training example.
        test = load_test_split(config, num_clients=len(list(grid.get_node_ids())))
        input_shape, num_classes = data_shape(config)
    model = build_model(
        config.model,
        input_shape=input_shape,
        num_classes=num_classes,
        settings=model_settings(config),
    )
    check_input_shape(config.augmentation, tuple(input_shape))  # before round 1
    strategy = _strategy(
        config,
        central_test=test is not None,
        every_node_holds_out=every_node_holds_out,
        num_nodes=len(list(grid.get_node_ids())),
    )
    secure = None  # SecAgg+ (server/secure_aggregation.py), checked before anything is written
    if config.secure_aggregation:
        secure = SecureAggregation.for_run(
            config, num_nodes=len(list(grid.get_node_ids())), client_sizes=client_sizes
        )
    folder = RunFolder(config.run_dir or default_run_dir(config))
    checkpoints = RunCheckpoints(config, run_dir=folder.path, grid=nodes)
    initial_arrays = checkpoints.initial_arrays(model)  # checked before anything is written
    if config.resume:
        print(checkpoints.resume_line(), flush=True)
    else:
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
    recorder = RoundRecorder(config, model=model, test=test, strategy=strategy, folder=folder)
    if secure is not None:  # the rounds run in Flower's legacy DefaultWorkflow
        stopped = ""
        try:
            secure.run(
                PromptGrid(grid),
                context,
                tracking=strategy,
                recorder=recorder,
                initial_arrays=initial_arrays,
                train_config=model_config,
            )
        except UserBudgetReached as spent:  # max-epsilon, checked before each round
            stopped = str(spent)
            print(f"Privacy budget reached, {stopped}", flush=True)
        recorder.write_privacy_report(stopped=stopped)
        if (user_level := user_level_layer(strategy)) is not None:
            print(user_level.describe(), flush=True)
        print(f"Run folder: {folder.path}", flush=True)
        return
    # Resumed: N - k rounds numbered k + 1 .. N, from the checkpoint (server/checkpointing.py).
    plan = checkpoints.plan(strategy, recorder=recorder, initial_arrays=initial_arrays)
    stopped = ""  # why the run ended before its last round
    try:
        plan.strategy.start(
            grid=PromptGrid(grid),
            initial_arrays=plan.initial_arrays,
            num_rounds=plan.num_rounds,
            timeout=config.round_timeout,
            evaluate_fn=plan.evaluate_fn,
            train_config=ConfigRecord(dict(model_config)),
            evaluate_config=ConfigRecord(dict(model_config)),
        )
    except UserBudgetReached as spent:  # run-config max-epsilon: checked before each round
        stopped = str(spent)
        print(f"Privacy budget reached, {stopped}", flush=True)
    recorder.write_privacy_report(stopped=stopped)
    if (user_level := user_level_layer(strategy)) is not None:
        print(user_level.describe(), flush=True)
    print(f"Run folder: {folder.path}", flush=True)


def _strategy(
    config: RunConfig, *, central_test: bool, every_node_holds_out: bool, num_nodes: int
) -> ClientTracking:
    """The run config's strategy (Flower's, by name), wrapped in :class:`ClientTracking`.

    Raises :class:`~fedmodel.config.ConfigError` before round 1 when the ``num_nodes``
    connected nodes are too few for a robust strategy's requirement (e.g. Bulyan's
    ``n >= 4f + 3``).
    """
    # A round cannot keep k updates unless k nodes are connected and sampled.
    min_train_nodes = config.min_train_replies
    check_federation_size(config, num_nodes=num_nodes, min_train_nodes=min_train_nodes)
    check_user_level_strategy(config)  # central DP composes with a FedAvg-style mean only
    # User-level DP or Poisson sampling: the cohort is drawn by CohortSampling, so the
    # strategy configures every node (server/strategies/user_level_dp.py).
    own_cohort = config.privacy_unit != "record" or config.client_sampling == "poisson"
    # Without a central test set the clients' own evaluation is the only measure; under
    # DP a client evaluates only on a held-out split (its training records' accuracy
    # would be a noise-free statistic of them), so only when every node has one.
    automatic = 1.0 if not central_test and (not config.dp or every_node_holds_out) else 0.0
    fraction_evaluate = config.fraction_evaluate or automatic
    if not central_test and not fraction_evaluate:
        print(
            "Evaluation off: no central test set, and under DP clients evaluate only on "
            "held-out splits, which not every node has",
            flush=True,
        )
    # Flower's strategies warn when fraction-evaluate is 0 (intended) and FedProx when
    # proximal-mu is 0 (then it is FedAvg, as asked).
    with _flower_log_level(logging.ERROR):
        strategy = build_strategy(
            config.replace(fraction_train=1.0) if own_cohort else config,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=1 if fraction_evaluate > 0 else 0,
            min_available_nodes=min_train_nodes,
        )
    if config.strategy != "fedavg":  # the default job's log stays as it was
        print(strategy_line(config, strategy), flush=True)
    if own_cohort:
        strategy = sampled_and_private(strategy, config=config, num_nodes=num_nodes)
    return ClientTracking(
        strategy,
        require_ledger=config.dp,
        # User-level DP: every round releases (missing updates are zero updates).
        min_train_replies=0 if config.privacy_unit != "record" else config.min_train_replies,
        round_timeout=config.round_timeout,
        max_update_norm=config.max_update_norm,
        update_norm_policy=config.update_norm_policy,
    )


@contextlib.contextmanager
def _flower_log_level(level: int) -> Iterator[None]:
    logger = logging.getLogger("flwr")
    previous = logger.level
    logger.setLevel(max(level, previous))
    try:
        yield
    finally:
        logger.setLevel(previous)
