"""`python -m worker`: one RQ training worker on REDIS_URL, queue MNIST_QUEUE, JSON serializer."""

from worker.runner import main

main()
