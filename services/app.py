"""The HTTP service: `create_app(config=None)` builds the Flask app (served by gunicorn).

It joins the layers of services/: the prediction service (`serving`), the HTTP plumbing (`web`),
and the blueprints of `api` (jobs, registry, datasets, evaluation, dashboard) and `predictor`
(v1, V2), which never import each other.

Settings come from their defaults, then the environment (`Settings.from_env`), then `config`:
lower-case keys override `Settings` fields, upper-case keys go to `app.config` as they are.
Redis, the registry, the jobs queue, the dataset store and the prediction service live in
``app.extensions["mnist"]`` (see web/context.py); one blueprint per resource.

A Redis that hangs must not take the process with it (`redis_clients`). Requests reach Redis
through at most `MNIST_REDIS_SLOTS` connections per process (half its threads by default): a
request that finds them all busy for `REDIS_SLOT_WAIT` s is answered 503 at once, so that the
other threads stay free for predictions answered from memory. Each command fails after
`MNIST_REDIS_TIMEOUT` s and is not retried after a timeout. The model cache's watcher threads
and `/readyz` (a PING of at most `READY_PING_TIMEOUT` s) have connections of their own.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
from collections.abc import Mapping
from typing import Any, NamedTuple

import redis
import swagger_ui_bundle
from flask import Flask, send_from_directory
from flask_smorest import Api
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from services.api import dashboard, datasets, evaluation, jobs, models, monitor, rollout
from services.predictor import feedback, v1, v2
from services.serving.service import PredictionService
from services.web import auth, errors, health, metrics
from services.web.context import EXTENSION, Services
from services.web.errors import RedisBusy
from shared import __version__
from shared.config import Settings
from shared.dataset_store import DatasetStore
from shared.jobs import Jobs
from shared.keys import Keys
from shared.redis_conn import connect
from shared.registry import Registry
from shared.rollout_rule import RuleTimer

log = logging.getLogger(__name__)

#: Service version reported by /v2 and the OpenAPI document.
VERSION = __version__
#: Retries of a Redis command after a connection error (a restart, a dropped connection), never
#: after a timeout: a Redis that hangs would hang again, and a write may have been applied.
#: redis-py's default, 10, makes each command against a dead Redis take seconds.
REDIS_RETRIES = 2
#: Seconds a request waits for one of its process's Redis connections before its 503 (a Redis
#: that answers frees one in well under a millisecond).
REDIS_SLOT_WAIT = 0.1
#: Seconds /readyz waits for Redis's PING: well inside the compose healthcheck's 3 s.
READY_PING_TIMEOUT = 0.5

DEFAULTS: dict[str, Any] = {
    "API_TITLE": "mnist-service",
    "API_VERSION": VERSION,
    "OPENAPI_VERSION": "3.0.3",
    "OPENAPI_URL_PREFIX": "/",
    "OPENAPI_JSON_PATH": "openapi.json",
    "OPENAPI_SWAGGER_UI_PATH": "docs",
    # Served from the swagger-ui-bundle package: the docs page works offline.
    "OPENAPI_SWAGGER_UI_URL": "/docs/static/",
    "API_SPEC_OPTIONS": {
        "info": {"description": "Train a NumPy digit classifier on RQ workers and serve its versions."},
        "components": {"securitySchemes": auth.SECURITY_SCHEMES},
    },
    "JSON_SORT_KEYS": False,
    # Start the model cache's watcher (pub/sub + poll); tests of other parts may turn it off.
    "MODEL_WATCHER": True,
    # Evaluate the automatic rollout rules every MNIST_ROLLOUT_INTERVAL s (API role only).
    "ROLLOUT_TIMER": True,
}


class _Slots(queue.LifoQueue):
    """The connection slots of a `BlockingConnectionPool`, whose timeout raises RedisBusy."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        try:
            return super().get(block, timeout)
        except queue.Empty:
            raise RedisBusy(f"the {self.maxsize} Redis connections of this process are all in use") from None


class RedisClients(NamedTuple):
    """The Redis clients of one web process (see the module docstring)."""

    requests: redis.Redis
    watcher: redis.Redis
    probe: redis.Redis


def redis_clients(settings: Settings) -> RedisClients:
    """Return the requests' client (at most `redis_slots` connections), the watcher's and /readyz's."""
    slots = settings.redis_slots or max(1, settings.web_threads // 2)
    common: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "retry": Retry(
            ExponentialBackoff(cap=0.5, base=0.05), REDIS_RETRIES, supported_errors=(redis.ConnectionError,)
        ),
        "health_check_interval": 30,
    }
    requests = connect(
        settings.redis_url,
        blocking=True,
        max_connections=slots,
        timeout=REDIS_SLOT_WAIT,
        queue_class=_Slots,
        **common,
    )
    probe = connect(
        settings.redis_url,
        socket_timeout=READY_PING_TIMEOUT,
        socket_connect_timeout=READY_PING_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    watcher = connect(settings.redis_url, **common)
    return RedisClients(requests, watcher, probe)


def _settings(config: Mapping[str, Any] | None) -> Settings:
    settings = Settings.from_env()
    names = {f.name for f in dataclasses.fields(Settings)}
    overrides = {k: v for k, v in (config or {}).items() if k in names}
    return dataclasses.replace(settings, **overrides)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Return the configured app; refuses to start without MNIST_API_TOKEN outside development."""
    settings = _settings(config)
    if settings.role not in ("all", "predictor"):
        raise RuntimeError(f"MNIST_ROLE={settings.role!r}: expected 'all' or 'predictor'")
    settings.require_token()
    app = Flask(__name__, static_folder=None)  # the dashboard blueprint serves /static
    app.config.update(DEFAULTS)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config.update({k: v for k, v in (config or {}).items() if k.isupper()})

    clients = redis_clients(settings)
    conn = clients.requests
    keys = Keys(settings.key_prefix)
    registry = Registry(
        conn,
        keys,
        retention=settings.retention,
        min_replicas=settings.min_replicas,
        # The web server's alias moves wait within its own Redis timeout: a longer WAIT would end as
        # a read timeout, and the redis-py retry would send the move again.
        replica_timeout=min(settings.replica_timeout, int(settings.redis_timeout * 800)),
    )
    watcher = Registry(clients.watcher, keys, retention=settings.retention)
    predictions = PredictionService(registry, settings, watcher=watcher)
    app.extensions[EXTENSION] = Services(
        settings=settings,
        redis=conn,
        probe=clients.probe,
        keys=keys,
        registry=registry,
        jobs=Jobs(conn, settings),
        datasets=DatasetStore(conn, keys),
        predictions=predictions,
    )

    api = Api(app)
    blueprints = [v1.blp, v2.blp, feedback.blp, health.blp]
    if settings.role != "predictor":  # the predictor role serves predictions and health only
        api_blueprints = [jobs.blp, models.blp, rollout.blp, monitor.blp, evaluation.blp, datasets.blp]
        blueprints = [*api_blueprints, *blueprints]
        app.register_blueprint(dashboard.blp)  # a page, not an API resource: not in /openapi.json
    for blueprint in blueprints:
        api.register_blueprint(blueprint)
    errors.register(app)
    metrics.install(app)

    @app.get("/docs/static/<path:filename>")
    def _swagger_static(filename: str):
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)

    if app.config["MODEL_WATCHER"]:
        predictions.start()
    if app.config["ROLLOUT_TIMER"] and settings.role != "predictor" and settings.rollout_interval > 0:
        # Its own connections (the watcher's client): never one of the requests' slots.
        RuleTimer(watcher, settings.rollout_interval, settings.drift_threshold).start()
    return app
