"""Helper of ``pfl_compare.py`` (not a benchmark itself): its non-DP MNIST job in pfl-research.

Runs in pfl's own virtual environment (pfl needs dp-accounting < 0.6, which clashes
with flwr), so it imports nothing of Flower: only fedmodel's CNN and IID partitioning
(torch and numpy). Prints one JSON line: wall and CPU seconds of each central iteration,
the final central test accuracy. ``pfl_compare.py`` runs it (its ``--smoke`` too); by hand::

    $FEDMODEL_PFL_PYTHON simulations/benchmarks/pfl_workload.py --data-dir DIR --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pfl.aggregate.simulate import SimulatedBackend  # noqa: E402
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams  # noqa: E402
from pfl.callback.base import TrainingProcessCallback  # noqa: E402
from pfl.callback.central_evaluation import CentralEvaluationCallback  # noqa: E402
from pfl.data.dataset import Dataset  # noqa: E402
from pfl.data.federated_dataset import FederatedDataset  # noqa: E402
from pfl.data.sampling import get_user_sampler  # noqa: E402
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams  # noqa: E402
from pfl.metrics import Metrics, Weighted  # noqa: E402
from pfl.model.pytorch import PyTorchModel  # noqa: E402

from fedmodel.data.partitioning import iid_partitions  # noqa: E402
from fedmodel.models.cnn import CNN  # noqa: E402


class PflCNN(CNN):
    """fedmodel's CNN with the ``loss`` and ``metrics`` methods pfl calls."""

    def loss(self, x, y, eval=False):  # noqa: A002 - pfl's keyword
        self.eval() if eval else self.train()
        return torch.nn.functional.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y, eval=False):  # noqa: A002
        self.eval() if eval else self.train()
        logits = self(x)
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct = (logits.argmax(1) == y).sum().item()
        return {"loss": Weighted(loss, len(y)), "accuracy": Weighted(correct, len(y))}


class RoundClock(TrainingProcessCallback):
    """Seconds between the ends of consecutive central iterations (evaluation included)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.last = (time.perf_counter(), time.process_time())

    def on_train_begin(self, *, model):
        self.last = (time.perf_counter(), time.process_time())
        return Metrics()

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
        now = (time.perf_counter(), time.process_time())
        self.times.append(now[0] - self.last[0])
        self.cpu.append(now[1] - self.last[1])
        self.last = now
        return False, Metrics()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    parser.add_argument("--data-dir", required=True, help="folder with mnist.npz")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    np.random.seed(0)  # pfl samples users with numpy's global generator
    torch.manual_seed(0)

    with np.load(os.path.join(args.data_dir, "mnist.npz")) as arrays:
        x_train = torch.as_tensor(arrays["x_train"][:, None] / np.float32(255.0))
        y_train = torch.as_tensor(arrays["y_train"].astype(np.int64))
        x_test = torch.as_tensor(arrays["x_test"][:, None] / np.float32(255.0))
        y_test = torch.as_tensor(arrays["y_test"].astype(np.int64))
    parts = iid_partitions(len(y_train), num_partitions=args.clients, seed=0)  # as fedmodel
    users = {i: (x_train[p], y_train[p]) for i, p in enumerate(parts)}
    training = FederatedDataset(
        lambda uid: Dataset(users[uid], user_id=str(uid)),
        get_user_sampler("minimize_reuse", list(users)),
    )
    central = Dataset((x_test, y_test))

    network = PflCNN(input_shape=(1, 28, 28), num_classes=10, hidden_size=64)
    model = PyTorchModel(
        model=network,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(network.parameters(), lr=1.0),  # plain FedAvg
    )
    clock = RoundClock()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=args.rounds,
            evaluation_frequency=1,
            train_cohort_size=args.per_round,
            val_cohort_size=0,
        ),
        backend=SimulatedBackend(training_data=training, val_data=training),
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=args.learning_rate,
            local_num_epochs=1,
            local_batch_size=args.batch_size,
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=1024),
        callbacks=[
            CentralEvaluationCallback(central, NNEvalHyperParams(local_batch_size=1024)),
            clock,
        ],
    )
    network.eval()
    with torch.no_grad():
        accuracy = float((network(x_test).argmax(1) == y_test).float().mean())
    report = {"seconds": clock.times, "cpu_seconds": clock.cpu, "accuracy": accuracy}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
