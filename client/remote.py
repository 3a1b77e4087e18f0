"""The commands that talk to the service: predict, train --url, models, jobs, alias.

Each returns an exit status; a `ClientError` (an error answer, an unreachable server) becomes one
line on stderr and status 1, like every other error of the `mnist` command.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from client.api import CLASSES, Client, ClientError, Prediction, predict_path
from client.inputs import Batch, InputError, discover, read

#: Where the service is when neither --url nor $MNIST_URL says.
DEFAULT_URL = "http://127.0.0.1:8000"
#: Prediction requests in flight at once: one is computed while the next is read and sent.
IN_FLIGHT = 2

Command = Callable[[argparse.Namespace], int]


def command(fn: Command) -> Command:
    """Turn a ClientError of the command into one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except ClientError as exc:
            print(f"mnist {args.command}: {exc}", file=sys.stderr)
            return 1

    return run


def url_of(args: argparse.Namespace) -> str:
    """Return --url, else $MNIST_URL, else the local default."""
    return getattr(args, "url", None) or os.environ.get("MNIST_URL") or DEFAULT_URL


def client_of(args: argparse.Namespace, *, predict: bool = False) -> Client:
    """Return a Client for the command's --url and --token (else the token variables)."""
    token = getattr(args, "token", None)
    if predict:
        token = token or os.environ.get("MNIST_PREDICT_TOKEN") or os.environ.get("MNIST_API_TOKEN")
    else:
        token = token or os.environ.get("MNIST_API_TOKEN")
    return Client(url_of(args), token or None)


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _show_progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False) and not _json(args) and sys.stderr.isatty()


# --- predict -------------------------------------------------------------------------------------


class Tally:
    """Counts of what was predicted: images, versions that answered, and the labelled confusion matrix."""

    def __init__(self) -> None:
        self.images = 0
        self.versions: set[int] = set()
        self.confusion = np.zeros((CLASSES, CLASSES), np.int64)

    def add(self, batch: Batch, answers: Prediction) -> None:
        self.images += len(batch)
        self.versions.update(answers.versions.tolist())
        known = batch.labels >= 0
        if known.any():
            pairs = batch.labels[known] * CLASSES + answers.labels[known]
            self.confusion += np.bincount(pairs, minlength=CLASSES * CLASSES).reshape(CLASSES, CLASSES)


@command
def predict(args: argparse.Namespace) -> int:
    """Classify every image of the inputs on the service; write the answers; report accuracy if labelled."""
    from client.outputs import open_writer, output_format

    output_format(args.output)  # a wrong --output is refused before any input is read
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.top_k is not None and not 1 <= args.top_k <= CLASSES:
        raise ValueError(f"--top-k must be from 1 to {CLASSES}, got {args.top_k}")
    skipped: list[str] = []
    bar: Any = _NoBar()

    def on_error(exc: InputError) -> None:
        if args.strict:
            raise exc
        bar.write(f"mnist predict: skipped {exc}", file=sys.stderr)  # above the progress bar, if any
        skipped.append(exc.path)

    inputs = discover(args.inputs, on_error)
    if not inputs:
        raise ValueError("nothing predicted: no readable input")
    if any(i.labelled for i in inputs):
        preload("client.local")  # for the confusion matrix, at the end
    counts = [i.count for i in inputs]
    total = sum(c for c in counts if c is not None) if None not in counts else None
    client = client_of(args, predict=True)
    path = predict_path(args.model, args.version, args.alias)
    writer = open_writer(args.output, args.probabilities, args.top_k)
    tally = Tally()
    bar = _bar(total, _show_progress(args))
    try:
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            pending: deque[tuple[Batch, Future[Prediction]]] = deque()
            try:
                for batch in read(inputs, args.batch_size, on_error):
                    pending.append((batch, pool.submit(client.predict_raw, path, batch.pixels)))
                    if len(pending) >= IN_FLIGHT:
                        _finish(*pending.popleft(), writer, tally, bar)
                while pending:
                    _finish(*pending.popleft(), writer, tally, bar)
            finally:
                for _, future in pending:
                    future.cancel()
    finally:
        bar.close()
        writer.close()
        client.close()
    if not tally.images:
        raise ValueError("nothing predicted: no readable image in the inputs")
    _report(args, tally, skipped)
    return 0


def preload(module: str) -> None:
    """Import `module` in a background thread while the command waits on the network.

    client.local pulls in the training stack (about a fifth of a second); the import lock makes
    a later `import` wait for this one rather than run twice. Not a daemon: an import is never
    cut off by the interpreter's exit.
    """
    threading.Thread(target=importlib.import_module, args=(module,), name=f"preload {module}").start()


def _finish(batch: Batch, future: Future[Prediction], writer: Any, tally: Tally, bar: Any) -> None:
    answers = future.result()
    writer.write(batch, answers)
    tally.add(batch, answers)
    bar.update(len(batch))


def _report(args: argparse.Namespace, tally: Tally, skipped: list[str]) -> None:
    versions = ", ".join(f"v{v}" for v in sorted(tally.versions)) or "-"
    where = f", written to {args.output}" if args.output else ""
    more = f"; {len(skipped)} input(s) skipped" if skipped else ""
    print(f"{tally.images:,} images predicted by {args.model} {versions}{where}{more}")
    labelled = int(tally.confusion.sum())
    if labelled:
        from client.local import format_confusion

        right = int(np.trace(tally.confusion))
        print(f"accuracy {100 * right / labelled:.2f} % ({right:,} of {labelled:,} labelled images)")
        print(format_confusion(tally.confusion))


class _NoBar:
    """What the commands call on a progress bar, doing nothing (no terminal, or --quiet)."""

    n = 0

    @staticmethod
    def write(text: str, file: Any = None) -> None:
        print(text, file=file or sys.stderr)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *a: Any, **kw: Any) -> None:
        pass

    def set_description_str(self, *a: Any, **kw: Any) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int | None, show: bool, unit: str = "img", desc: str = "predict") -> Any:
    if not show:
        return _NoBar()
    from tqdm import tqdm  # only a terminal gets a bar, and only then pays for the import

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)


# --- train --url ---------------------------------------------------------------------------------


@command
def train(args: argparse.Namespace) -> int:
    """Submit a training job to the service and follow it through its event stream to its end."""
    from client.local import spec_from_args

    spec = {**spec_from_args(args), "model": args.model or "mnist"}
    client = client_of(args)
    view = client.submit(spec)
    job_id = view["id"]
    url = url_of(args)
    if not _json(args):
        print(f"job {job_id} queued on {url}", file=sys.stderr)
    try:
        final = _follow(client, job_id, _show_progress(args))
    except KeyboardInterrupt:
        if args.cancel_on_interrupt:
            view = client.cancel(job_id)
            print(f"\njob {job_id} {view['status']} (interrupted)", file=sys.stderr)
        else:
            print(
                f"\nstopped following job {job_id}: it keeps running."
                f"\n  to see it:   mnist jobs show {job_id} --url {url}"
                f"\n  to cancel:   mnist jobs cancel {job_id} --url {url}",
                file=sys.stderr,
            )
        return 130
    finally:
        client.close()
    return _train_result(args, final)


def _follow(client: Client, job_id: str, show: bool) -> dict[str, Any]:
    """Follow a job's events with a progress bar; return its final view."""
    bar = _bar(None, show, unit="step", desc=f"job {job_id[:8]}")
    final: dict[str, Any] = {}
    try:
        for event, view in client.events(job_id):
            if event == "error":
                raise ClientError(
                    str(view.get("status", "Error")), view.get("code"), str(view.get("message"))
                )
            final = view
            progress = view.get("progress") or {}
            total = progress.get("total_iterations")
            if total and getattr(bar, "total", None) != total:
                bar.total = total
            if progress.get("iteration") is not None:
                bar.update(int(progress["iteration"]) - bar.n)
            postfix = {
                k: f"{progress[key]:.4g}"
                for k, key in (("loss", "loss"), ("acc", "train_accuracy"), ("val", "val_accuracy"))
                if progress.get(key) is not None
            }
            bar.set_description_str(f"job {job_id[:8]} {view.get('status')}")
            bar.set_postfix(postfix)
    finally:
        bar.close()
    return final


def _train_result(args: argparse.Namespace, view: dict[str, Any]) -> int:
    status = view.get("status")
    job_id = view.get("id")
    result = view.get("result") or {}
    if status != "finished":
        reason = view.get("error") or status
        print(f"mnist train: job {job_id} {status}: {reason}", file=sys.stderr)
        return 1
    model: str = result["model"]
    version: int = result["version"]
    metrics: dict[str, Any] = result.get("metrics") or {}
    if args.out:
        with client_of(args) as client:
            data = client.weights(model, version)
        with open(args.out, "wb") as f:
            f.write(data)
    if _json(args):
        summary = {**metrics, "job_id": job_id, "status": status, "model": model, "version": version}
        if args.out:
            summary["out"] = args.out
        print(json.dumps(summary))
        return 0
    print(f"job {job_id} finished: published {model} v{version}")
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        if metrics.get(key) is not None:
            print(f"  {key.replace('_', ' '):<15} {100 * metrics[key]:.2f} %")
    if metrics.get("seconds") is not None:
        print(f"  {metrics['seconds']:.1f} s, {metrics.get('samples_per_second', 0):,.0f} samples/s")
    if args.out:
        print(f"  weights written to {args.out}")
    return 0


# --- models, jobs, alias -------------------------------------------------------------------------


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


@command
def models(args: argparse.Namespace) -> int:
    """List the models, or one model's versions and aliases."""
    with client_of(args) as client:
        data: Any = client.model(args.name) if args.name else client.models()
    if _json(args):
        print(json.dumps(data))
        return 0
    if not args.name:
        if not data:
            print("no models yet")
        for m in data:
            aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(m["aliases"].items())) or "-"
            print(f"{m['name']:<20} latest v{m['latest']}  {m['versions']} version(s)  aliases: {aliases}")
        return 0
    print(f"{data['name']}: latest v{data['latest']}")
    for v in data["versions"]:
        metrics = v.get("metrics") or {}
        dataset = (v.get("dataset") or {}).get("name") or "-"
        aliases = f"  [{', '.join(v['aliases'])}]" if v.get("aliases") else ""
        created = v.get("created_at") or "-"
        test, val = _pct(metrics.get("test_accuracy")), _pct(metrics.get("val_accuracy"))
        print(f"  v{v['version']:<4} {created:<26} test {test:>8}  val {val:>8}  {dataset}{aliases}")
    return 0


@command
def jobs(args: argparse.Namespace) -> int:
    """List recent jobs, or show or cancel one."""
    action = getattr(args, "jobs_action", None)
    with client_of(args) as client:
        if action == "cancel":
            view = client.cancel(args.job_id)
            print(json.dumps(view) if _json(args) else f"job {view['id']} {view['status']}")
            return 0
        if action == "show":
            view = client.job(args.job_id)
            print(json.dumps(view) if _json(args) else _job_line(view))
            if not _json(args) and view.get("error"):
                print(f"  error: {view['error']}")
            return 0
        listing = client.jobs(status=args.status, limit=args.limit)
    if _json(args):
        print(json.dumps(listing))
        return 0
    if not listing:
        print("no jobs")
    for view in listing:
        print(_job_line(view))
    return 0


def _job_line(view: dict[str, Any]) -> str:
    progress = view.get("progress") or {}
    done = f"{100 * progress['fraction']:.0f} %" if progress.get("fraction") is not None else "-"
    result = view.get("result") or {}
    published = f"{result['model']} v{result['version']}" if result.get("version") is not None else "-"
    created = view.get("created_at") or "-"
    return f"{view['id']}  {view['status']:<9} {done:>5}  {published:<16} {created}"


@command
def alias(args: argparse.Namespace) -> int:
    """Set or delete an alias of a model."""
    with client_of(args) as client:
        if args.alias_action == "set":
            answer = client.set_alias(args.model, args.alias, args.version)
        else:
            client.delete_alias(args.model, args.alias)
            answer = {"model": args.model, "alias": args.alias, "deleted": True}
    if _json(args):
        print(json.dumps(answer))
    elif args.alias_action == "set":
        previous = answer.get("previous")
        was = f" (was v{previous})" if previous is not None else ""
        print(f"{answer['model']} {answer['alias']} → v{answer['version']}{was}")
    else:
        print(f"{args.model} {args.alias} deleted")
    return 0
