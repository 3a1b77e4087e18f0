"""Load: many predictions at concurrency 16 while new versions are published, through gunicorn.

Every request must succeed, and every answer must come from a version that had been published
when it was received. p50/p99 latency and throughput are recorded. The client is 16 threads,
each with its own requests.Session (keep-alive), in this process, on the same two cores as the
server: its own CPU time is part of each latency.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from tests.api_helpers import live_stack
from tests.reliability.conftest import Figures
from tests.reliability.stack import Load, all_serving, label_blob, wait_for

CONCURRENCY = 16


def run_load(
    redis_url: str, tmp_path: Path, figures: Figures, scenario: str, total: int, publishes: int
) -> None:
    model = "loaded"
    with live_stack(redis_url, tmp_path, workers=2, MNIST_DEFAULT_MODEL=model) as live:
        registry = live.registry()
        # When each version was published: (publish() called, publish() returned), monotonic.
        published: dict[int, tuple[float, float]] = {}
        started = time.monotonic()
        first = registry.publish(model, label_blob(0), {})
        published[first] = (started, time.monotonic())
        wait_for(lambda: all_serving(live.server, model, first), 30, "both gunicorn workers to serve v1")

        load = Load(
            live.url + f"/v1/models/{model}:predict", concurrency=CONCURRENCY, total=total, deadline=600
        ).start()
        publish_errors: list[str] = []

        def publisher() -> None:
            # Spread the publishes over the run: one each time another share of the requests is done.
            for i in range(1, publishes + 1):
                while load.done < total * i / (publishes + 1):
                    if not load.running:
                        return
                    time.sleep(0.01)
                try:
                    called = time.monotonic()
                    version = registry.publish(model, label_blob(i), {"i": i})
                    published[version] = (called, time.monotonic())
                except Exception as exc:  # reported by the assertion below
                    publish_errors.append(repr(exc))

        thread = threading.Thread(target=publisher, daemon=True)
        thread.start()
        result = load.join()
        thread.join(30)

        # Each answer's version had been published (publish() called) before the answer came back.
        stale = [
            o
            for o in result.outcomes
            if o.status == 200
            and (o.version not in published or published[o.version][0] > o.started + o.seconds)
        ]
        # How long after each publish() was called the first answer from the new version arrived.
        first_answer = []
        for version, (called, _) in sorted(published.items())[1:]:
            ends = [o.started + o.seconds for o in result.outcomes if o.version == version]
            if ends:
                first_answer.append(min(ends) - called)
        summary = result.summary()
        figures.record(
            scenario,
            **summary,
            publishes=len(published) - 1,
            versions_answering=len({o.version for o in result.outcomes if o.version is not None}),
            answers_from_unpublished_versions=len(stale),
            first_answer_after_publish_max_ms=round(max(first_answer, default=0) * 1000, 1),
            server="gunicorn 2 workers x 8 threads",
        )
        assert publish_errors == []
        assert len(result.outcomes) == total
        assert result.failures == [], [f"{o.status} {o.error}" for o in result.failures[:10]]
        assert stale == []
        assert len(published) == publishes + 1
        assert requests.get(f"{live.url}/healthz", timeout=10).status_code == 200


def test_load_short_2000_requests_3_publishes(redis_url: str, tmp_path: Path, figures: Figures) -> None:
    run_load(redis_url, tmp_path, figures, "load_short", total=2_000, publishes=3)


@pytest.mark.reliability
def test_load_20000_requests_at_concurrency_16_with_10_publishes(
    redis_url: str, tmp_path: Path, figures: Figures
) -> None:
    run_load(redis_url, tmp_path, figures, "load", total=20_000, publishes=10)
