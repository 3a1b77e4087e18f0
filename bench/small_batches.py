"""Forward pass of small batches: `mlp.predict_proba` against the row layout A·Wᵀ at every size.

`mlp.predict_proba` multiplies batches in `mlp.COLUMN_BATCHES` by columns (W·Aᵀ), because
OpenBLAS runs a few rows against a large transposed matrix far below its speed. This measures,
for each batch size, microseconds per call of both ways on the same 784-512-10 model, interleaved
round by round with one BLAS thread (as in a gunicorn worker), and the ratio row/column: above 1
means the column layout is faster. The choice of `COLUMN_BATCHES` is read off this table.

Usage: python bench/small_batches.py [--rounds 3]  (sets OPENBLAS_NUM_THREADS=1 unless set)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import timeit
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads OpenBLAS

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import print_table, save_results  # noqa: E402
from shared import mlp  # noqa: E402

SIZES = (784, 512, 10)
BATCHES = (1, 2, 3, 4, 8, 16, 32, 64, 128, 255, 256, 512, 1024)


def micros(fn, calls: int) -> float:
    """Return the best microseconds per call of `fn` over 3 repeats of `calls` calls."""
    return min(timeit.repeat(fn, number=calls, repeat=3)) / calls * 1e6


def main() -> None:
    """Print the table and save the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per batch size")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    params = mlp.init_params(SIZES, rng)
    rows, results = [], {}
    for m in BATCHES:
        x = mlp.scale_pixels(rng.integers(0, 256, (m, mlp.INPUT_SIZE), dtype=np.uint8))
        by_rows = mlp.predict_proba(params, x, columns=False)
        np.testing.assert_allclose(mlp.predict_proba(params, x), by_rows, rtol=1e-4, atol=1e-6)
        calls = max(10, 4000 // m)
        served, row = [], []
        for _ in range(args.rounds):
            served.append(micros(lambda x=x: mlp.predict_proba(params, x), calls))
            row.append(micros(lambda x=x: mlp.predict_proba(params, x, columns=False), calls))
        s, r = statistics.median(served), statistics.median(row)
        columns = mlp.COLUMN_BATCHES[0] <= m < mlp.COLUMN_BATCHES[1]
        results[m] = {"predict_proba_us": s, "rows_us": r, "columns": columns}
        rows.append(
            {
                "batch": m,
                "layout used": "W·Aᵀ" if columns else "A·Wᵀ",
                "mlp.predict_proba": f"{s:,.0f} µs",
                "A·Wᵀ always": f"{r:,.0f} µs",
                "speed-up": f"{r / s:.2f}×",
            }
        )
        print_table(rows[-1:], header=len(rows) == 1)
    threads = os.environ.get("OPENBLAS_NUM_THREADS")
    path = save_results("small_batches", {"model": list(SIZES), "blas_threads": threads, "batches": results})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
