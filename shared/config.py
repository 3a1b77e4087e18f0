"""Settings from the environment, each documented with its unit and default.

One frozen dataclass read once per process (`Settings.from_env()`); tests build their own with
`dataclasses.replace`. Required secrets have no default: `require_token()` fails loudly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

#: Redis server of the registry and the queues.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: Prefix of every key this service writes (see shared/keys.py).
DEFAULT_KEY_PREFIX = "mnist:"
#: RQ queue that training jobs go to.
DEFAULT_QUEUE = "training"


def _env_field(name: str, default, doc: str):
    return field(default=default, metadata={"env": name, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every tunable of the service; `from_env` fills it from ``MNIST_*`` variables."""

    redis_url: str = _env_field("REDIS_URL", DEFAULT_REDIS_URL, "Redis URL (password allowed)")
    key_prefix: str = _env_field("MNIST_KEY_PREFIX", DEFAULT_KEY_PREFIX, "prefix of every key")
    queue: str = _env_field("MNIST_QUEUE", DEFAULT_QUEUE, "RQ queue of training jobs")
    env: str = _env_field("MNIST_ENV", "production", "production or development")
    role: str = _env_field("MNIST_ROLE", "all", "all (every route) or predictor (predict + health)")
    api_token: str = _env_field("MNIST_API_TOKEN", "", "bearer token for writes (required)")
    predict_token: str = _env_field("MNIST_PREDICT_TOKEN", "", "bearer token for predictions")
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
    # Prediction.
    poll_interval: float = _env_field("MNIST_POLL_INTERVAL", 2.0, "seconds between registry polls")
    model_cache_size: int = _env_field("MNIST_MODEL_CACHE", 8, "pinned versions held in memory")
    max_batch: int = _env_field("MNIST_MAX_BATCH", 10_000, "images per prediction request")
    forward_threads: int = _env_field(
        "MNIST_FORWARD_THREADS", 0, "threads a large batch's forward pass is split across (0: one per core)"
    )
    max_body_bytes: int = _env_field("MNIST_MAX_BODY_BYTES", 64 * 1024 * 1024, "bytes per request body")
    max_dataset_bytes: int = _env_field(
        "MNIST_MAX_DATASET_BYTES", 128 * 1024 * 1024, "bytes per dataset upload"
    )
    default_model: str = _env_field("MNIST_DEFAULT_MODEL", "mnist", "model name of /v1/jobs")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every field from its environment variable, else keep its default."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            kind: Callable[[str], Any] = type(f.default)
            try:
                values[f.name] = kind(raw)
            except ValueError as exc:
                raise ValueError(f"{f.metadata['env']}={raw!r}: expected {type(f.default).__name__}") from exc
        return cls(**values)

    @property
    def development(self) -> bool:
        """True when MNIST_ENV=development (tokens may then be absent)."""
        return self.env == "development"

    def require_token(self) -> None:
        """Refuse to start a server without `MNIST_API_TOKEN` outside development."""
        if not self.api_token and not self.development:
            raise RuntimeError(
                "MNIST_API_TOKEN is not set: set it (e.g. `export MNIST_API_TOKEN=$(openssl rand"
                " -hex 16)`) or run with MNIST_ENV=development"
            )
