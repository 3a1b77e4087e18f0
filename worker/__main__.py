"""`python -m worker`: one RQ training worker on REDIS_URL, queue MNIST_QUEUE, JSON serializer."""

from shared.config import Settings
from worker import blas

# First of all: BLAS reads its thread count once, when NumPy loads it (worker.runner imports it).
blas.limit(Settings.from_env())

from worker.runner import main  # noqa: E402

main()
