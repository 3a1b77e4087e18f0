"""Redis memory of the prediction log and the feedback labels after many logged predictions.

Logs `--predictions` images (default 1,000,000, in requests of 1,000) through the prediction
service's recorder at MNIST_LOG_SAMPLE 1 with the default MNIST_LOG_MAXLEN, gives each a feedback
label, and prints Redis's `used_memory` growth every tenth of the run, then `MEMORY USAGE` of the
stream, the index and the feedback hash. It runs a private redis-server of its own (deleted after).

Usage: python bench/log_memory.py [--predictions 1000000]
(bench/rollout.py runs `measure` and checks it against `bound`, docs/api.md's "Memory".)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, bench/ comes first on sys.path, and bench/client.py would hide the package.
sys.path[0:1] = [str(ROOT)]

from services.serving.service import PredictionService  # noqa: E402
from shared import mlp, serialization  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.feedback import Feedback  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.registry import Registry  # noqa: E402
from tests.reliability.stack import private_redis  # noqa: E402

#: Images per request.
BATCH = 1000
#: Bytes per logged image in Redis 7.0, measured (docs/api.md, "Memory"): the stream entry with its
#: pixels, its request id in the index, its feedback label.
ENTRY_BYTES, INDEX_BYTES, LABEL_BYTES = 1100, 93, 93


def bound(log_maxlen: int) -> int:
    """Return the bytes one model's log, index and feedback labels stay under (docs/api.md)."""
    return log_maxlen * (ENTRY_BYTES + INDEX_BYTES + LABEL_BYTES)


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    measure(args.predictions)
    return 0


def measure(predictions: int) -> dict[str, float]:
    """Log `predictions` images with feedback into a private Redis; return its figures in bytes.

    `grown`: the largest growth of `used_memory` seen; `final`: at the end; `stream`, `index`,
    `labels`: MEMORY USAGE of each; `log_maxlen`; `seconds`.
    """
    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp)) as db:
        r = db.client()
        keys = Keys()
        registry = Registry(r, keys)
        params = mlp.init_params((mlp.INPUT_SIZE, 16, mlp.CLASSES), np.random.default_rng(0))
        registry.publish("mnist", serialization.model_to_bytes(params, {}), {})
        base = r.info("memory")["used_memory"]
        settings = dataclasses.replace(Settings(), log_sample=1.0, recorder_queue=10 * BATCH)
        service = PredictionService(registry, settings)
        feedback = Feedback(r, keys, settings.log_maxlen)
        images = np.random.default_rng(1).integers(0, 256, (BATCH, mlp.INPUT_SIZE), dtype=np.uint8)
        rounds = max(predictions // BATCH, 1)
        started = time.monotonic()
        peak = 0
        for i in range(rounds):
            answer = service.predict("mnist", images)
            service.recorder.drain()
            feedback.add("mnist", [(f"{answer.request_id}/{j}", j % 10) for j in range(BATCH)])
            if (i + 1) % max(rounds // 100, 1) == 0:
                peak = max(peak, r.info("memory")["used_memory"] - base)
            if (i + 1) % max(rounds // 10, 1) == 0:
                grown = (r.info("memory")["used_memory"] - base) / 2**20
                print(
                    f"{(i + 1) * BATCH:>10,} logged: used_memory +{grown:.1f} MiB, stream"
                    f" {r.xlen(keys.prediction_log('mnist')):,} entries, feedback labels"
                    f" {r.hlen(keys.feedback_labels('mnist')):,}, {time.monotonic() - started:.0f} s",
                    flush=True,
                )

        def usage(key: str) -> int:
            return r.memory_usage(key, samples=0) or 0

        logged = int(r.get(keys.logged_count("mnist")) or 0)
        generations = range(logged // max(settings.log_maxlen // 2, 1) + 1)
        figures = {
            "grown": float(peak),
            "final": float(r.info("memory")["used_memory"] - base),
            "stream": float(usage(keys.prediction_log("mnist"))),
            "index": float(sum(usage(keys.prediction_index("mnist", g)) for g in generations)),
            "labels": float(usage(keys.feedback_labels("mnist"))),
            "log_maxlen": float(settings.log_maxlen),
            "seconds": time.monotonic() - started,
        }
        print(
            f"stream {figures['stream'] / 2**20:.1f} MiB, index {figures['index'] / 2**20:.1f} MiB, feedback"
            f" labels {figures['labels'] / 2**20:.1f} MiB (MNIST_LOG_MAXLEN {settings.log_maxlen:,})"
        )
        r.close()
    return figures


if __name__ == "__main__":
    sys.exit(main())
