"""Training throughput of shared/training.py against PyTorch on the same CPU, side by side.

Same network (784-256-10, ReLU, softmax cross-entropy), same optimizer (plain SGD, lr 0.1),
float32, same data (fashion-mnist, 60,000 training images, the same 54,000/6,000
train/validation split and a validation pass at each epoch end on both sides), 2 epochs, batch
sizes 64, 256 and full. Our side is exactly the command

    mnist train --dataset fashion-mnist --hidden 256 --optimizer sgd --learning-rate 0.1
                --batch-size B --epochs 2 --json

and its reported samples_per_second; the PyTorch side is the idiomatic loop (nn.Sequential,
CrossEntropyLoss, optim.SGD, a shuffled index per epoch) timed the same way. Runs alternate
(ours, theirs, ours, …) in fresh processes so that machine noise hits both; the figure is the
ratio of medians. The sgemm ceiling is the samples/s that the step's five matrix products
alone reach (NumPy/OpenBLAS), an upper bound for any implementation using this BLAS.

Usage: python bench/train.py [--repeats 5] [--batch-sizes 64,256,0] [--dataset fashion-mnist]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import print_table, save_results  # noqa: E402

HIDDEN = 256
EPOCHS = 2
LEARNING_RATE = 0.1


def ours(dataset: str, batch: int) -> float:
    """Run `mnist train` as a user would; return the samples/s it reports."""
    mnist = Path(sys.executable).parent / "mnist"
    cmd = [
        str(mnist), "train", "--dataset", dataset, "--hidden", str(HIDDEN), "--optimizer", "sgd",
        "--learning-rate", str(LEARNING_RATE), "--batch-size", str(batch), "--epochs", str(EPOCHS),
        "--json", "--out", os.devnull,
    ]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["samples_per_second"])


def theirs(dataset: str, batch: int) -> float:
    """Run the PyTorch loop in a fresh process; return its samples/s."""
    cmd = [sys.executable, __file__, "--torch-run", dataset, str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def torch_run(dataset: str, batch: int) -> float:
    """Train 784-256-10 with PyTorch on the same split; return samples/s of the timed loop."""
    import torch

    from shared import datasets
    from shared.training import split_validation

    data = datasets.load(dataset)
    x_tr, y_tr, x_val, y_val = split_validation(data.x_train, data.y_train, 0.1, seed=0)
    x = torch.from_numpy(x_tr.astype(np.float32) / 255)
    y = torch.from_numpy(y_tr.astype(np.int64))
    xv = torch.from_numpy(x_val.astype(np.float32) / 255)
    yv = torch.from_numpy(y_val.astype(np.int64))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))
    opt = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = len(y)
    b = n if batch == 0 else batch
    started = time.perf_counter()
    for _ in range(EPOCHS):
        order = torch.randperm(n)
        for lo in range(0, n, b):
            rows = order[lo : lo + b]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[rows]), y[rows])
            loss.backward()
            opt.step()
        with torch.no_grad():
            float((model(xv).argmax(1) == yv).float().mean())
    return EPOCHS * n / (time.perf_counter() - started)


def sgemm_ceiling(batch: int, n: int, repeats: int = 3) -> float:
    """Return samples/s of one SGD step's five matrix products alone, best of `repeats`."""
    rng = np.random.default_rng(0)
    b = n if batch == 0 else batch
    x = rng.random((b, 784), dtype=np.float32)
    w1 = rng.random((HIDDEN, 784), dtype=np.float32)
    w2 = rng.random((10, HIDDEN), dtype=np.float32)
    a1 = rng.random((b, HIDDEN), dtype=np.float32)
    dz2 = rng.random((b, 10), dtype=np.float32)
    steps = max(2, min(200, (40 * 2**20) // (b * 784)))
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            x @ w1.T  # Z1 = X·W1ᵀ
            a1 @ w2.T  # Z2 = A1·W2ᵀ
            dz2.T @ a1  # dW2 = dZ2ᵀ·A1
            dz2 @ w2  # dA1 = dZ2·W2
            a1.T @ x  # dW1 = dZ1ᵀ·X
        best = max(best, steps * b / (time.perf_counter() - t))
    return best


def main() -> int:
    """Measure and print the table; save it under bench/results/."""
    if len(sys.argv) == 4 and sys.argv[1] == "--torch-run":
        print(torch_run(sys.argv[2], int(sys.argv[3])))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", default="64,256,0")
    parser.add_argument("--dataset", default="fashion-mnist")
    args = parser.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed: pip install torch==2.13.0 (make bench does it)", file=sys.stderr)
        return 1
    from shared import datasets

    n_train = len(datasets.load(args.dataset).y_train) * 9 // 10
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        a, b = [], []
        for _ in range(args.repeats):
            a.append(ours(args.dataset, batch))
            b.append(theirs(args.dataset, batch))
        ceiling = sgemm_ceiling(batch, n_train)
        mine, torch_sps = statistics.median(a), statistics.median(b)
        rows.append(
            {
                "batch": "full" if batch == 0 else batch,
                "numpy_samples_per_s": round(mine),
                "torch_samples_per_s": round(torch_sps),
                "ratio_vs_torch": round(mine / torch_sps, 2),
                "sgemm_ceiling_samples_per_s": round(ceiling),
                "ratio_vs_sgemm_ceiling": round(mine / ceiling, 2),
            }
        )
        print_table(rows[-1:], header=len(rows) == 1)
    save_results("train", {"dataset": args.dataset, "epochs": EPOCHS, "hidden": HIDDEN, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
