"""Latency as a distribution and server CPU per request, one checkout against another, alternated.

One image of JSON V2 per request (`POST /v2/models/bench/infer`, a UINT8 tensor [1, 784] as
`data`, the body a V2 client sends) from Debian's `wrk` (C, one event loop per thread, its body
from a Lua script) at 1, 8 and 32 connections, a model of 784-512-10:

- **through the front**: each checkout's own `mnist up --workers 0` (its Procfile's gunicorn on a
  unix socket, its nginx template in front), as users run it;
- **gunicorn alone**: each checkout's gunicorn on a TCP port (its gunicorn_conf.py), for reference.

Per run: p50, p90, p99 and p99.9 latency (wrk's own histogram), requests/s, and the server's CPU
per request: the utime + stime (/proc/<pid>/stat) of every gunicorn process and every nginx
process of that server, over the run, divided by the requests wrk completed. Also images/s of
one 10,000-image V2 binary (UINT8) request through the front, the fastest of 3 calls per round.

Sides and kinds alternate, round by round (the order of the sides flips each round): the machine
is shared, and a neighbour's burst hits both alike. Each figure is the median over the rounds,
with the range. Everything the run wrote in Redis is deleted afterwards.

Usage: python bench/latency.py [--old PATH] [--rounds 3] [--seconds 4] [--clients 1,8,32]
       python bench/latency.py --table bench/results/latency.json   (the saved run's table again)
(`--old` is another checkout of this repository with its own .venv, e.g. a `git worktree` of main;
without it, only this checkout is measured.)
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import paired, print_table, save_results  # noqa: E402
from client.up import free_port  # noqa: E402
from shared import mlp, serialization  # noqa: E402
from shared.keys import Keys  # noqa: E402
from shared.registry import Registry  # noqa: E402

MODEL = "bench"
SIZES = (784, 512, 10)
BIG_BATCH = 10_000
INFER = f"/v2/models/{MODEL}/infer"
CLIENTS = (1, 8, 32)
PERCENTILES = (50, 90, 99, 99.9)
#: wrk threads at most: the client shares the machine's two cores with the server.
WRK_THREADS = 2
#: Clock ticks per second of /proc/<pid>/stat's utime and stime.
TICKS = os.sysconf("SC_CLK_TCK")
#: Seconds a server has to answer its first prediction.
START_TIMEOUT = 60.0

# wrk's script: the body read from a file, and one JSON line of figures when the run ends
# (latencies in µs; requests and errors counted by wrk itself).
LUA = """
local f = assert(io.open(%(body)s, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "errors": %%d, "status_errors": %%d, '
    .. '"p50": %%d, "p90": %%d, "p99": %%d, "p99.9": %%d, "max": %%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""


@dataclass
class Server:
    """One server to measure: a process tree and the port it answers on."""

    side: str  # "old" or "new"
    front: str  # "nginx" (mnist up) or "gunicorn"
    process: subprocess.Popen
    port: int
    folder: Path
    runs: list[dict] = field(default_factory=list)

    def pids(self) -> dict[int, str]:
        """Return the gunicorn and nginx processes of this server, each with its kind (not `mnist up`)."""
        found = {}
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            for kind in ("gunicorn", "nginx"):
                if kind.encode() in cmdline:
                    found[pid] = kind
        return found


def descendants(root: int) -> list[int]:
    """Return the pids of every descendant of `root` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """Return utime + stime, in clock ticks, of each pid still running."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return out


def server_env(checkout: Path, redis_url: str, prefix: str, folder: Path) -> dict[str, str]:
    """Return the environment of a checkout's server (as `mnist up` passes it, with our prefix)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MNIST_", "WEB_", "PROMETHEUS_"))}
    env.update(
        {
            "PATH": f"{checkout / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "REDIS_URL": redis_url,
            "MNIST_KEY_PREFIX": prefix,
            "MNIST_API_TOKEN": uuid.uuid4().hex,
            "MNIST_DEFAULT_MODEL": MODEL,
            "MNIST_LOG_LEVEL": "warning",
            "PROMETHEUS_MULTIPROC_DIR": str(folder / "prometheus"),
        }
    )
    env.pop("PYTHONPATH", None)
    return env


def start_front(side: str, checkout: Path, redis_url: str, prefix: str) -> Server:
    """Start the checkout's `mnist up --workers 0` (nginx in front of gunicorn) on a free port."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-latency-{side}-"))
    env = server_env(checkout, redis_url, prefix, folder)
    env.pop("PROMETHEUS_MULTIPROC_DIR")  # mnist up makes its own
    port = free_port()
    argv = [str(checkout / ".venv" / "bin" / "mnist"), "up", "--port", str(port), "--workers", "0"]
    log = (folder / "up.log").open("wb")
    process = subprocess.Popen(argv, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    return _ready(Server(side, "nginx", process, port, folder))


def start_gunicorn(side: str, checkout: Path, redis_url: str, prefix: str) -> Server:
    """Start the checkout's gunicorn alone (its Procfile's command and config) on a free TCP port."""
    folder = Path(tempfile.mkdtemp(prefix=f"bench-latency-{side}-"))
    (folder / "prometheus").mkdir()
    env = server_env(checkout, redis_url, prefix, folder)
    port = free_port()
    env["MNIST_BIND"] = f"127.0.0.1:{port}"
    argv = [
        str(checkout / ".venv" / "bin" / "gunicorn"),
        "--config", "services/gunicorn_conf.py", "services.wsgi:app",
    ]  # fmt: skip
    log = (folder / "gunicorn.log").open("wb")
    process = subprocess.Popen(argv, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    return _ready(Server(side, "gunicorn", process, port, folder))


def _ready(server: Server) -> Server:
    """Wait until `server` answers a one-image prediction correctly; RuntimeError with its log if not."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            answer = infer_once(server.port, one_image_body(np.zeros((1, mlp.INPUT_SIZE), np.uint8)))
            if answer["outputs"]:
                return server
        except (OSError, http.client.HTTPException, RuntimeError):
            time.sleep(0.2)
    stop(server)
    logs = "".join(p.read_text(errors="replace") for p in server.folder.glob("*.log"))
    raise RuntimeError(f"{server.side} {server.front} did not start:\n{logs[-3000:]}")


def stop(server: Server) -> None:
    """Stop a server (SIGTERM; `mnist up` stops its own processes) and remove its folder."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    shutil.rmtree(server.folder, ignore_errors=True)


def one_image_body(images: np.ndarray) -> bytes:
    """Return the JSON V2 request of one image: a UINT8 tensor [1, 784] as `data`."""
    tensor = {"name": "input", "datatype": "UINT8", "shape": [len(images), mlp.INPUT_SIZE], "data": images}
    return orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)


def binary_body(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """Return a V2 binary request of UINT8 images (Triton's extension) and its headers."""
    tensor = {
        "name": "input",
        "datatype": "UINT8",
        "shape": list(images.shape),
        "parameters": {"binary_data_size": images.nbytes},
    }
    header = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + images.tobytes(), headers


def infer_once(port: int, body: bytes, headers: dict[str, str] | None = None) -> dict:
    """POST one V2 request and return its JSON part; RuntimeError on an error status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", INFER, body=body, headers=headers or {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"POST {INFER}: {response.status} {data[:200]!r}")
    length = response.getheader("Inference-Header-Content-Length")
    return orjson.loads(data[: int(length)] if length else data)


def batch_rate(port: int, body: bytes, headers: dict[str, str]) -> float:
    """Return images/s of one 10,000-image request (the answer's binary tensors read whole)."""
    started = time.perf_counter()
    answer = infer_once(port, body, headers)
    elapsed = time.perf_counter() - started
    if answer["outputs"][0]["shape"][0] != BIG_BATCH:
        raise RuntimeError("the batch answer does not hold 10,000 rows")
    return BIG_BATCH / elapsed


def run_wrk(server: Server, script: Path, clients: int, seconds: int) -> dict:
    """Run wrk against `server` for `seconds`; return its figures and the server's CPU per request."""
    pids = server.pids()
    argv = [
        "wrk", "-t", str(min(clients, WRK_THREADS)), "-c", str(clients), "-d", f"{seconds}s",
        "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{server.port}{INFER}",
    ]  # fmt: skip
    before = cpu_ticks(list(pids))
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 30)
    after = cpu_ticks(list(pids))
    line = out.stdout.strip().splitlines()[-1]
    figures = json.loads(line)
    if figures["errors"] or figures["status_errors"]:
        raise RuntimeError(f"{server.side} {server.front}: wrk saw errors: {line}")
    requests = figures["requests"]
    figures["rps"] = requests / (figures["duration_us"] / 1e6)
    for kind in ("gunicorn", "nginx"):
        ticks = sum(after[pid] - before[pid] for pid in after if pid in before and pids[pid] == kind)
        figures[f"cpu_us_{kind}"] = ticks / TICKS * 1e6 / requests
    figures["cpu_us"] = figures["cpu_us_gunicorn"] + figures["cpu_us_nginx"]
    figures["clients"] = clients
    return figures


def median_range(values: list[float]) -> tuple[float, float, float]:
    """Return (median, lowest, highest)."""
    return statistics.median(values), min(values), max(values)


def table(runs: dict[str, list[dict]], batches: dict[str, list[float]], meta: dict) -> list[dict[str, str]]:
    """Return the rows of the table: each figure's median over rounds (range), side by side.

    `runs` maps "side/front" to that server's runs, in round order; with two sides, the last
    column is the median over rounds of new / old within a round (the machine's drift cancels).
    """
    sides = sorted({key.split("/")[0] for key in runs}, key=lambda s: s != "old")
    fronts = [f for f in ("nginx", "gunicorn") if any(key.endswith(f"/{f}") for key in runs)]
    names = {"nginx": "through mnist up's nginx", "gunicorn": "gunicorn alone"}
    rows = []
    for front in fronts:
        for c in meta["clients"]:
            for figure, unit, scale in (
                ("p50", "ms", 1e-3),
                ("p90", "ms", 1e-3),
                ("p99", "ms", 1e-3),
                ("p99.9", "ms", 1e-3),
                ("rps", "req/s", 1),
                ("cpu_us", "µs/req", 1),
                *([("cpu_us_nginx", "µs/req", 1)] if front == "nginx" else []),
            ):
                row = {"server": names[front], "clients": str(c), "figure": f"{figure} ({unit})"}
                per_side = {}
                for side in sides:
                    values = [r[figure] * scale for r in runs[f"{side}/{front}"] if r["clients"] == c]
                    per_side[side] = values
                    mid, low, high = median_range(values)
                    digits = 2 if unit == "ms" else 0
                    row[side] = f"{mid:,.{digits}f} ({low:,.{digits}f}–{high:,.{digits}f})"
                if len(sides) == 2:
                    row["new / old"] = f"{paired(per_side['new'], per_side['old']):.2f}"
                rows.append(row)
    batch_row = {"server": names["nginx"], "clients": "1", "figure": "10,000 images per request (img/s)"}
    for side in sides:
        mid, low, high = median_range(batches[side])
        batch_row[side] = f"{mid:,.0f} ({low:,.0f}–{high:,.0f})"
    if len(sides) == 2:
        batch_row["new / old"] = f"{paired(batches['new'], batches['old']):.2f}"
    rows.append(batch_row)
    return rows


def report(runs: dict[str, list[dict]], batches: dict[str, list[float]], meta: dict) -> None:
    """Print the table (old and new side by side)."""
    print(
        f"\none image of JSON V2 per request (wrk), medians of {meta['rounds']} alternating rounds"
        f" of {meta['seconds']} s (range in brackets), {meta['cpus']} CPUs\n"
    )
    print_table(table(runs, batches, meta))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", type=Path, help="another checkout (with its .venv) to measure alongside")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of every measure")
    parser.add_argument("--seconds", type=int, default=4, help="duration of each wrk run")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="connections, comma-separated")
    parser.add_argument("--fronts", default="nginx,gunicorn", help="servers to measure: nginx, gunicorn")
    parser.add_argument("--table", type=Path, help="print the table of a saved bench/results/latency.json")
    args = parser.parse_args(argv)
    if args.table is not None:
        saved = json.loads(args.table.read_text())
        report(saved["runs"], saved["batch_images_per_s"], saved["config"])
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: make bench installs it (apt-get install wrk)")
    clients = tuple(int(c) for c in args.clients.split(","))
    fronts = tuple(args.fronts.split(","))
    checkouts = {"new": ROOT}
    if args.old is not None:
        checkouts = {"old": args.old.resolve(), "new": ROOT}

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(redis_url)
    rng = np.random.default_rng(0)
    Registry(client, Keys(prefix)).publish(
        MODEL, serialization.model_to_bytes(mlp.init_params(SIZES, rng), {}), {"bench": True}
    )
    images = rng.integers(0, 256, (BIG_BATCH, mlp.INPUT_SIZE), dtype=np.uint8)
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    (work / "one.json").write_bytes(one_image_body(images[:1]))
    script = work / "post.lua"
    script.write_text(LUA % {"body": json.dumps(str(work / "one.json"))})
    big, big_headers = binary_body(images)
    servers: list[Server] = []
    batches: dict[str, list[float]] = {side: [] for side in checkouts}
    try:
        for side, checkout in checkouts.items():
            if "nginx" in fronts:
                servers.append(start_front(side, checkout, redis_url, prefix))
            if "gunicorn" in fronts:
                servers.append(start_gunicorn(side, checkout, redis_url, prefix))
        for server in servers:  # warm-up: every thread of every process, the batch's page faults
            run_wrk(server, script, max(clients), 1)
            if server.front == "nginx":
                batch_rate(server.port, big, big_headers)
        for round_ in range(args.rounds):
            order = servers if round_ % 2 == 0 else servers[::-1]
            for c in clients:
                for server in order:
                    server.runs.append(run_wrk(server, script, c, args.seconds))
            for server in order:
                if server.front == "nginx":
                    batches[server.side].append(
                        max(batch_rate(server.port, big, big_headers) for _ in range(3))
                    )
            print(f"round {round_ + 1} of {args.rounds} done", flush=True)
    finally:
        for server in servers:
            stop(server)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "clients": list(clients),
        "checkouts": {side: str(path) for side, path in checkouts.items()},
        "model": list(SIZES),
        "cpus": os.cpu_count(),
    }
    runs = {f"{s.side}/{s.front}": s.runs for s in servers}
    report(runs, batches, meta)
    path = save_results("latency", {"config": meta, "runs": runs, "batch_images_per_s": batches})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
