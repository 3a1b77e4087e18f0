"""The commands that talk to the service (train --url, models, jobs, alias, datasets from-feedback,
push, canary) and what they share with predict.

Each returns an exit status; a `ClientError` (an error answer, an unreachable server) becomes one
line on stderr and status 1, like every other error of the `mnist` command. `mnist predict` is in
client/predict.py. This module imports requests (through client.api) only when a command runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from client.cli import spec_from_args
from client.defaults import DEFAULT_URL
from client.errors import ClientError

if TYPE_CHECKING:
    from client.api import Client

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


#: What a command sends its `--token` to: predict routes, reads, or writes (and their reads).
PREDICT, READ, WRITE = "predict", "read", "write"


def token_of(args: argparse.Namespace, use: str = WRITE) -> str | None:
    """Return the token of a command by what it calls (`use`): --token, else the environment's.

    predict: $MNIST_PREDICT_TOKEN, never $MNIST_API_TOKEN (the write token never goes to a
    predict route); read: $MNIST_PREDICT_TOKEN, else $MNIST_API_TOKEN (the service takes either);
    write: $MNIST_API_TOKEN.
    """
    token = getattr(args, "token", None)
    if use in (PREDICT, READ):
        token = token or os.environ.get("MNIST_PREDICT_TOKEN")
    if use in (READ, WRITE):
        token = token or os.environ.get("MNIST_API_TOKEN")
    return token or None


def client_of(args: argparse.Namespace, use: str = WRITE) -> Client:
    """Return a Client for the command's --url and tokens: --token goes to its `use` (read or write).

    A write command's reads (following its job, downloading its weights) send $MNIST_PREDICT_TOKEN
    when set, else the write token. $MNIST_API_TOKEN never becomes a predict token.
    """
    from client.api import Client  # requests: a fifth of a second, paid by the commands that use it

    if use == READ:  # --token, else $MNIST_PREDICT_TOKEN, else $MNIST_API_TOKEN (Client's reads)
        token = getattr(args, "token", None) or os.environ.get("MNIST_PREDICT_TOKEN")
        return Client(url_of(args), os.environ.get("MNIST_API_TOKEN"), predict_token=token or None)
    return Client(url_of(args), token_of(args, WRITE), predict_token=os.environ.get("MNIST_PREDICT_TOKEN"))


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def show_progress(args: argparse.Namespace) -> bool:
    """Return True when the command shows a progress bar: stderr is a terminal, no --quiet or --json."""
    return not getattr(args, "quiet", False) and not _json(args) and sys.stderr.isatty()


class NoBar:
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


def bar_of(total: int | None, show: bool, unit: str = "img", desc: str = "predict") -> Any:
    """Return a tqdm progress bar on stderr when `show`, else a bar that does nothing."""
    if not show:
        return NoBar()
    from tqdm import tqdm  # only a terminal gets a bar, and only then pays for the import

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)


# --- train --url ---------------------------------------------------------------------------------


@command
def train(args: argparse.Namespace) -> int:
    """Submit a training job to the service and follow it through its event stream to its end."""
    spec = {**spec_from_args(args), "model": args.model or "mnist"}
    client = client_of(args)
    view = client.submit(spec)
    job_id = view["id"]
    url = url_of(args)
    if not _json(args):
        print(f"job {job_id} queued on {url}", file=sys.stderr)
    try:
        final = _follow(client, job_id, show_progress(args))
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
    bar = bar_of(None, show, unit="step", desc=f"job {job_id[:8]}")
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
    with client_of(args, READ) as client:
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
    for alias, split in sorted((data.get("splits") or {}).items()):
        print(f"  {alias}: {_split_text(split)}")
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
    with client_of(args, WRITE if action == "cancel" else READ) as client:
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


@command
def push(args: argparse.Namespace) -> int:
    """Publish a model file as a new version of a model."""
    with open(args.file, "rb") as f:
        data = f.read()
    with client_of(args) as client:
        answer = client.push(args.model, data, alias=args.alias)
    if _json(args):
        print(json.dumps(answer))
        return 0
    aliases = f" [{', '.join(answer['aliases'])}]" if answer.get("aliases") else ""
    sizes = "-".join(str(n) for n in (answer.get("architecture") or {}).get("sizes", []))
    sha = answer["lineage"]["sha256"]
    print(f"{answer['model']} v{answer['version']} imported{aliases}: {sizes}, sha256 {sha[:12]}…")
    return 0


def _split_text(split: dict[str, float] | None) -> str:
    return ", ".join(f"v{v} {100 * w:.0f} %" for v, w in (split or {}).items()) or "-"


@command
def canary(args: argparse.Namespace) -> int:
    """Start, promote, roll back or show a canary rollout."""
    action = args.canary_action
    if action == "rule":
        return _rule(args)
    with client_of(args, READ if action == "status" else WRITE) as client:
        if action == "status":
            answer = client.rollout_status(args.model, args.alias)
        elif action == "start":
            answer = client.rollout(
                args.model,
                "canary",
                version=args.version,
                weight=args.weight,
                alias=args.alias,
                reason=args.reason,
            )
        else:
            answer = client.rollout(args.model, action, alias=args.alias, reason=args.reason)
    if _json(args):
        print(json.dumps(answer))
        return 0
    found = answer.get("canary")
    shown = f"canary v{found['version']} at {100 * found['weight']:.0f} %" if found else "no canary"
    print(f"{args.model} {answer['alias']}: {_split_text(answer.get('split'))} ({shown})")
    if action == "status":
        for d in answer.get("decisions", []):
            version = f" v{d['version']}" if d.get("version") is not None else ""
            reason = f": {d['reason']}" if d.get("reason") else ""
            after = _split_text(d.get("split"))
            print(f"  {d['time']}  {d['action']}{version} by {d['actor']} → {after}{reason}")
    return 0


def _rule(args: argparse.Namespace) -> int:
    """Show, set or delete the automatic rollout rule (`mnist canary rule`)."""
    setting = args.min_feedback is not None or args.max_accuracy_drop is not None
    if setting and (args.min_feedback is None or args.max_accuracy_drop is None):
        print("mnist canary rule: a rule needs both --min-feedback and --max-accuracy-drop", file=sys.stderr)
        return 2
    with client_of(args, WRITE if setting or args.delete else READ) as client:
        if args.delete:
            client.delete_rollout_rule(args.model)
            print(
                json.dumps({"model": args.model, "rule": None}) if _json(args) else f"{args.model}: no rule"
            )
            return 0
        if setting:
            answer = client.set_rollout_rule(
                args.model,
                args.min_feedback,
                args.max_accuracy_drop,
                max_drift=args.max_drift,
                enabled=not args.disabled,
                alias=args.alias,
            )
        else:
            answer = client.rollout_rule(args.model)
    if _json(args):
        print(json.dumps(answer))
        return 0
    drift = f", max drift {answer['max_drift']}" if answer.get("max_drift") is not None else ""
    state = "" if answer["enabled"] else " (disabled)"
    print(
        f"{args.model} {answer['alias']}: rule after {answer['min_feedback']} labels, accuracy drop at most"
        f" {answer['max_accuracy_drop']}{drift}{state}"
    )
    now = answer["now"]
    print(f"  now: {now['action'] or 'nothing'}: {now['reason']}")
    return 0


@command
def datasets_from_feedback(args: argparse.Namespace) -> int:
    """Store a dataset on the service from a model's logged predictions that have feedback labels."""
    with client_of(args) as client:
        info = client.dataset_from_feedback(args.name, args.model, args.version, args.merge)
    if _json(args):
        print(json.dumps(info))
        return 0
    origin = info.get("origin") or {}
    merged = f" + {origin['merged']}" if origin.get("merged") else ""
    print(
        f"{info['name']}: {origin.get('feedback_images', 0):,} images with feedback labels{merged},"
        f" {info['train_size']:,} to train on, {info['test_size']:,} to test; {info['digest']}"
    )
    return 0
