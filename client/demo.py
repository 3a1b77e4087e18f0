"""`mnist demo`: the service end to end in one command, then everything stops.

It starts the local stack (`mnist up`, in the background, its log in a file), submits a training
job over HTTP (the default recipe on mnist-sample) and follows it live, sends the 1,000 held-out
sample digits as one batch prediction to the version it published, prints the accuracy and the
confusion matrix, says where to look next, and stops the stack.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from client.api import Client
from client.outputs import format_confusion
from client.remote import _follow
from client.up import find_nginx, free_port
from shared import datasets, scoring

#: Seconds the stack may take to answer /readyz.
START_TIMEOUT = 90.0
#: Seconds the stack gets to stop before it is killed.
STOP_TIMEOUT = 30.0


def _port(wanted: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", wanted))
            return wanted
        except OSError:
            return free_port()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the stack stopped while starting; its log: {log}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the stack did not answer within {START_TIMEOUT:.0f} s; its log: {log}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def demo(args: argparse.Namespace) -> int:
    """Run the demo; return 0 when the trained model answered the held-out digits."""
    port = _port(args.port)
    url = f"http://127.0.0.1:{port}"
    token = os.environ.get("MNIST_API_TOKEN") or secrets.token_hex(16)
    log = Path(tempfile.gettempdir()) / "mnist-demo-stack.log"
    mnist = Path(sys.executable).parent / "mnist"
    # A demo on this machine only: without nginx it runs gunicorn alone rather than not at all.
    proxy = [] if find_nginx() else ["--no-proxy"]
    front = "nginx, gunicorn" if not proxy else "gunicorn"
    print(f"1/4  starting the stack on {url} ({front}, 1 training worker, Redis; log: {log})", flush=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(mnist), "up", "--port", str(port), "--workers", "1", *proxy],
            env={**os.environ, "MNIST_API_TOKEN": token},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_ready(proc, url, log)
        with Client(url, token, predict_token=os.environ.get("MNIST_PREDICT_TOKEN")) as client:
            spec = {"model": args.model, "dataset": "mnist-sample", "recipe": "default"}
            if args.epochs:
                spec["epochs"] = args.epochs
            shown = ", ".join(f"{k}: {v}" for k, v in spec.items())
            print(f"2/4  training: POST /v1/jobs {{{shown}}}", flush=True)
            view = client.submit(spec)
            final = _follow(client, view["id"], show=True)
            if final.get("status") != "finished":
                print(f"mnist demo: the job {final.get('status')}: {final.get('error')}", file=sys.stderr)
                return 1
            version = final["result"]["version"]
            metrics = final["result"]["metrics"]
            print(
                f"     published {args.model} v{version} after {metrics['seconds']:.1f} s of training"
                f" ({metrics['samples_per_second']:,.0f} samples/s)",
                flush=True,
            )
            sample = datasets.load("mnist-sample")
            assert sample.x_test is not None and sample.y_test is not None
            print(f"3/4  predicting the {len(sample.y_test):,} held-out digits in one batch", flush=True)
            started = time.perf_counter()
            prediction = client.predict(
                sample.x_test, model=args.model, version=version, batch_size=len(sample.y_test)
            )
            seconds = time.perf_counter() - started
        figures = scoring.score(sample.y_test, prediction.labels)
        assert figures.accuracy is not None  # the sample's test split holds 1,000 digits
        shown = f"{100 * figures.accuracy:.2f} %"
        print(f"     accuracy {shown} on digits it never saw ({seconds * 1000:.0f} ms)")
        print(format_confusion(figures.confusion))
        print(
            "4/4  where to look next (`make up` keeps the stack running):\n"
            f"     dashboard     {url}/            models, live training curves, draw a digit\n"
            f"     API docs      {url}/docs        every route, from the OpenAPI document\n"
            f"     metrics       {url}/metrics\n"
            "     the CLI       mnist predict --url URL image.png …   (docs/client.md)\n"
            "stopping the stack",
            flush=True,
        )
        return 0
    finally:
        _stop(proc)
