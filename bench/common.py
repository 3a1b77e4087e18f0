"""Helpers shared by the benchmarks: a plain-text table and a results file per run."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def print_table(rows: list[dict[str, Any]], header: bool = True) -> None:
    """Print rows of a dict list as a Markdown table (header line only when `header`)."""
    if not rows:
        return
    keys = list(rows[0])
    if header:
        print("| " + " | ".join(keys) + " |")
        print("|" + "|".join("---" for _ in keys) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |", flush=True)


def save_results(name: str, payload: dict[str, Any]) -> Path:
    """Write `payload` with the machine's description to bench/results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
