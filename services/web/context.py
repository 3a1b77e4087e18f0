"""What a running app holds: settings and the objects built from them, in `app.extensions`."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app

from services.serving.service import PredictionService
from shared.config import Settings
from shared.dataset_store import DatasetStore
from shared.jobs import Jobs
from shared.keys import Keys
from shared.registry import Registry

#: Key of the services in `app.extensions`.
EXTENSION = "mnist"


@dataclass
class Services:
    """The app's connections and components; one per process."""

    settings: Settings
    # /readyz's PING: a connection of its own with a short timeout. Declared above the field
    # `redis`, which hides the module of that name below it.
    probe: redis.Redis
    redis: redis.Redis
    keys: Keys
    registry: Registry
    jobs: Jobs
    datasets: DatasetStore
    predictions: PredictionService


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions[EXTENSION]
