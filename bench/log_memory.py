"""Redis memory of the prediction log and the feedback labels after many logged predictions.

Logs `--predictions` images (default 1,000,000, in requests of 1,000) through the prediction
service's recorder at MNIST_LOG_SAMPLE 1 with the default MNIST_LOG_MAXLEN, gives each a feedback
label, and prints Redis's `used_memory` growth every tenth of the run, then `MEMORY USAGE` of the
stream, the index and the feedback hash. It runs a private redis-server of its own (deleted after).

Usage: python bench/log_memory.py [--predictions 1000000]
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


def main(argv: list[str] | None = None) -> int:
    """Run the measurement and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=1_000_000)
    args = parser.parse_args(argv)
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
        rounds = max(args.predictions // BATCH, 1)
        started = time.monotonic()
        for i in range(rounds):
            answer = service.predict("mnist", images)
            service.recorder.drain()
            feedback.add("mnist", [(f"{answer.request_id}/{j}", j % 10) for j in range(BATCH)])
            if (i + 1) % max(rounds // 10, 1) == 0:
                grown = (r.info("memory")["used_memory"] - base) / 2**20
                print(
                    f"{(i + 1) * BATCH:>10,} logged: used_memory +{grown:.1f} MiB, stream"
                    f" {r.xlen(keys.prediction_log('mnist')):,} entries, feedback labels"
                    f" {r.hlen(keys.feedback_labels('mnist')):,}, {time.monotonic() - started:.0f} s",
                    flush=True,
                )

        def mib(key: str) -> float:
            return (r.memory_usage(key, samples=0) or 0) / 2**20

        logged = int(r.get(keys.logged_count("mnist")) or 0)
        generations = range(logged // max(settings.log_maxlen // 2, 1) + 1)
        index = sum(mib(keys.prediction_index("mnist", g)) for g in generations)
        print(
            f"stream {mib(keys.prediction_log('mnist')):.1f} MiB, index {index:.1f} MiB, feedback"
            f" labels {mib(keys.feedback_labels('mnist')):.1f} MiB (MNIST_LOG_MAXLEN {settings.log_maxlen:,})"
        )
        r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
