"""The reliability suite's figures: each scenario records what it measured, printed at the end.

`figures.record("scenario", key=value, ...)` in a test stores numbers under that scenario. The
terminal summary prints them after every run. When `MNIST_RELIABILITY_RESULTS` names a file
(`make reliability` sets it to bench/results/reliability.json), they are also merged into it:
a scenario that ran replaces its previous entry, the others are kept. `tests/reliability/report.py`
turns that file into the tables of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

#: Environment variable naming the results file (unset: figures are printed only).
RESULTS_ENV = "MNIST_RELIABILITY_RESULTS"

_FIGURES: dict[str, dict[str, Any]] = {}
#: Outcome of each test of this run ("passed", "failed", "skipped"), by test id.
_OUTCOMES: dict[str, str] = {}


class Figures:
    """What the scenarios of this run measured, by scenario."""

    def record(self, scenario: str, **values: Any) -> None:
        """Add `values` to the figures of `scenario` (later values of a key replace earlier ones)."""
        entry = _FIGURES.setdefault(scenario, {})
        entry.update(values)
        entry["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")


@pytest.fixture(scope="session")
def figures() -> Figures:
    """The recorder of this run's figures."""
    return Figures()


def _write(path: Path) -> None:
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    scenarios = {**old.get("scenarios", {}), **_FIGURES}
    outcomes = {**old.get("outcomes", {}), **_OUTCOMES}
    payload = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "scenarios": dict(sorted(scenarios.items())),
        "outcomes": dict(sorted(outcomes.items())),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/reliability/" not in report.nodeid:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _OUTCOMES[report.nodeid.split("tests/reliability/", 1)[1]] = report.outcome
    elif report.when == "teardown" and report.outcome == "failed":
        _OUTCOMES[report.nodeid.split("tests/reliability/", 1)[1]] = "failed"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get(RESULTS_ENV)
    if target and (_FIGURES or _OUTCOMES):
        _write(Path(target))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for scenario, values in sorted(_FIGURES.items()):
        shown = ", ".join(f"{k}={v}" for k, v in values.items() if k != "recorded_at")
        terminalreporter.write_line(f"{scenario}: {shown}")
    target = os.environ.get(RESULTS_ENV)
    if target:
        terminalreporter.write_line(f"(merged into {target})")
