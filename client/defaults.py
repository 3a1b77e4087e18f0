"""Defaults of the client and the `mnist` command, each with its unit; importing this costs nothing."""

#: Where the service is when neither --url nor $MNIST_URL says.
DEFAULT_URL = "http://127.0.0.1:8000"
#: Seconds to wait for a connection and then for each read of an answer (seconds).
DEFAULT_TIMEOUT = 60.0
#: Retries after the first attempt (count).
DEFAULT_RETRIES = 3
#: Backoff factor: waits of 0, 2×, 4×… this many seconds between retries (seconds); 3 retries span 1.5 s.
DEFAULT_BACKOFF = 0.25
#: Images per prediction request; the server refuses more than MNIST_MAX_BATCH (10,000).
DEFAULT_BATCH_SIZE = 2000
#: Statuses that mean "try again": a failing or restarting server, or a proxy in front of it.
RETRY_STATUSES = (500, 502, 503, 504)
#: Pixels per image and classes per prediction.
PIXELS, CLASSES = 784, 10
