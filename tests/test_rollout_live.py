"""A canary end to end through gunicorn (two processes) and Redis: `mnist push`, `mnist canary`, routing.

Each gunicorn process holds its own model cache: the split reaches both by the registry's events
(hot reload, no restart), and a routing key lands on the same version whichever process answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_helpers import Live, live_stack
from tests.app_fixtures import layers, meta, npz, params
from tests.live_fixtures import wait_for
from tests.test_cli import last_json_line, mnist

pytestmark = pytest.mark.slow

#: Routing keys of the test's clients.
KEYS = [f"user-{i}" for i in range(60)]
IMAGE = {"instances": [[0] * 784]}


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One gunicorn of two processes for the module."""
    with live_stack(redis_url, tmp_path_factory.mktemp("rollout"), workers=2) as stack:
        yield stack


def remote(live: Live, *args: str, cwd: Path) -> Any:
    """Run `mnist args… --url … --token … --json` against the stack; return its JSON answer."""
    return last_json_line(mnist(*args, "--url", live.url, "--token", live.env.token, "--json", cwd=cwd))


def served(live: Live, model: str, labels: dict[int, int]) -> dict[str, int]:
    """Return the version that answers each routing key, checking it answers its label (`labels[version]`)."""
    found = {}
    for key in KEYS:
        r = live.post(f"/v1/models/{model}:predict", json=IMAGE, headers={"X-Routing-Key": key})
        assert r.status_code == 200, r.text
        body = r.json()
        # The answer names the version that computed it: these networks answer their own label.
        assert body["predictions"][0]["label"] == labels[body["model_version"]]
        found[key] = body["model_version"]
    return found


def test_push_canary_promote_and_roll_back_live(live: Live, tmp_path: Path) -> None:
    # A file written by `mnist train --out` imports as it is.
    trained = mnist("train", "--recipe", "seed", "--iterations", "5", "--out", "trained.npz", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    first = remote(live, "push", "trained.npz", "--model", "trained", "--alias", "production", cwd=tmp_path)
    assert first["lineage"]["source"] == "import" and first["aliases"] == ["production"]
    assert live.post("/v1/models/trained:predict", json=IMAGE).json()["model_version"] == first["version"]

    for label in (3, 8):
        (tmp_path / f"label{label}.npz").write_bytes(npz({**layers(params(label=label)), "meta": meta()}))
    base = remote(live, "push", "label3.npz", "--model", "live", "--alias", "production", cwd=tmp_path)[
        "version"
    ]
    canary = remote(live, "push", "label8.npz", "--model", "live", cwd=tmp_path)["version"]
    labels = {base: 3, canary: 8}
    assert set(served(live, "live", labels).values()) == {base}  # both processes load the default

    state = remote(
        live,
        "canary",
        "start",
        str(canary),
        "--weight",
        "0.5",
        "--model",
        "live",
        "--reason",
        "r1",
        cwd=tmp_path,
    )
    assert state["canary"] == {"version": canary, "weight": 0.5, "base": base}
    # Hot reload: both processes route by the split within a poll, without a restart.
    wait_for(
        lambda: set(served(live, "live", labels).values()) == {base, canary}, timeout=15, what="the split"
    )
    sticky = served(live, "live", labels)
    for _ in range(2):  # each key stays on its version, whichever process answers
        assert served(live, "live", labels) == sticky
    # The client's own X-Request-Id routes as X-Routing-Key does.
    r = live.post("/v1/models/live:predict", json=IMAGE, headers={"X-Request-Id": KEYS[0]})
    assert r.json()["model_version"] == sticky[KEYS[0]]

    status = remote(live, "canary", "status", "--model", "live", cwd=tmp_path)
    assert status["split"] == {str(base): 0.5, str(canary): 0.5}
    assert [(d["action"], d["reason"]) for d in status["decisions"]] == [("canary", "r1")]
    text = mnist("canary", "status", "--model", "live", "--url", live.url, cwd=tmp_path)
    assert text.returncode == 0 and f"canary v{canary} at 50 %" in text.stdout
    listing = mnist("models", "live", "--url", live.url, cwd=tmp_path)
    assert f"production: v{base} 50 %, v{canary} 50 %" in listing.stdout

    remote(live, "canary", "promote", "--model", "live", "--reason", "better", cwd=tmp_path)
    wait_for(lambda: set(served(live, "live", labels).values()) == {canary}, timeout=15, what="the promotion")
    refused = mnist(
        "canary", "rollback", "--model", "live", "--url", live.url, "--token", live.env.token, cwd=tmp_path
    )
    assert refused.returncode == 1 and "runs no canary" in refused.stderr

    remote(live, "canary", "start", str(base), "--weight", "0.3", "--model", "live", cwd=tmp_path)
    wait_for(
        lambda: set(served(live, "live", labels).values()) == {base, canary},
        timeout=15,
        what="a canary of v1",
    )
    remote(live, "canary", "rollback", "--model", "live", "--reason", "worse", cwd=tmp_path)
    wait_for(lambda: set(served(live, "live", labels).values()) == {canary}, timeout=15, what="the roll-back")
    model = live.get("/v1/models/live").json()
    assert model["aliases"] == {"production": canary} and model["splits"] == {}


def test_push_refuses_a_bad_file_in_one_line(live: Live, tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    proc = mnist(
        "push", "bad.npz", "--model", "bad", "--url", live.url, "--token", live.env.token, cwd=tmp_path
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "not a zip archive" in proc.stderr
    assert live.get("/v1/models/bad").status_code == 404
    missing = mnist("push", "nope.npz", "--url", live.url, "--token", live.env.token, cwd=tmp_path)
    assert missing.returncode == 1 and "nope.npz" in missing.stderr


def test_canary_rule_sets_shows_and_deletes_the_automatic_rule(live: Live, tmp_path: Path) -> None:
    (tmp_path / "ruled.npz").write_bytes(npz({**layers(params(label=3)), "meta": meta()}))
    base = remote(live, "push", "ruled.npz", "--model", "ruled", "--alias", "production", cwd=tmp_path)
    canary = remote(live, "push", "ruled.npz", "--model", "ruled", cwd=tmp_path)["version"]
    remote(live, "canary", "start", str(canary), "--weight", "0.2", "--model", "ruled", cwd=tmp_path)

    rule = remote(
        live, "canary", "rule", "--model", "ruled", "--min-feedback", "50", "--max-accuracy-drop", "0.05",
        "--max-drift", "0.3", cwd=tmp_path,
    )  # fmt: skip
    assert rule["min_feedback"] == 50 and rule["max_drift"] == 0.3 and rule["enabled"] is True
    assert rule["now"] == {"action": None, "reason": f"waiting: v{canary} has 0 of 50 feedback labels"}
    shown = mnist("canary", "rule", "--model", "ruled", "--url", live.url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "rule after 50 labels, accuracy drop at most 0.05, max drift 0.3" in shown.stdout
    assert f"now: nothing: waiting: v{canary} has 0 of 50" in shown.stdout
    assert base["version"] != canary

    half = mnist("canary", "rule", "--model", "ruled", "--min-feedback", "5", "--url", live.url, cwd=tmp_path)
    assert half.returncode == 2 and "needs both" in half.stderr
    remote(live, "canary", "rule", "--model", "ruled", "--delete", cwd=tmp_path)
    gone = mnist("canary", "rule", "--model", "ruled", "--url", live.url, cwd=tmp_path)
    assert gone.returncode == 1 and "has no rollout rule" in gone.stderr
