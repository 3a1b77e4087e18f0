"""The `mnist` command: train and evaluate in-process, list datasets, and talk to the service.

Every error ends as one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from client.errors import flatten
from shared.spec import FIELDS, LENGTH_FIELDS

#: Exit status of a command that failed for a reason it explains.
EXIT_ERROR = 1
#: Exit status of a command line that does not parse.
EXIT_USAGE = 2
#: Images per prediction request of `mnist predict` (see docs/client.md for how it was chosen).
DEFAULT_PREDICT_BATCH = 2000


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _hidden(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 256 or 256,128, got {text!r}") from None


def add_training_flags(p: argparse.ArgumentParser) -> None:
    """Add the flags of a training spec, one per field of shared.spec.FIELDS.

    Every flag defaults to unset (None): TrainingSpecSchema fills in the spec's defaults, and
    `mnist train` can tell a --model it was given from one it was not.
    """
    length = p.add_mutually_exclusive_group()
    for field in FIELDS:
        text = field.flag_help or field.help or None
        if field.default is not None:
            text = f"{text} (default: {field.default})"
        where = length if field.name in LENGTH_FIELDS else p
        if field.items is not None:
            where.add_argument(field.flag, type=_hidden, help=text)
        elif field.choices:
            where.add_argument(field.flag, choices=field.choices, help=text)
        else:
            where.add_argument(field.flag, type=field.kind, help=text)


def spec_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Return the raw training spec that the flags of `add_training_flags` describe (unset ones left out)."""
    return {f.name: getattr(args, f.name) for f in FIELDS if getattr(args, f.name, None) is not None}


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """Return a command that imports `module` only when it runs (the CLI starts faster)."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), name)(args)

    return run


def _remote(name: str, module: str = "client.remote") -> Callable[[argparse.Namespace], int]:
    """Return a command that talks to the service (client.remote's, or `mnist predict`)."""

    def run(args: argparse.Namespace) -> int:
        # They do no matrix products: NumPy, if an input needs it, need not start BLAS threads.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        return _lazy(module, name)(args)

    return run


def _train(args: argparse.Namespace) -> int:
    if args.url:
        return _remote("train")(args)
    if args.model or args.cancel_on_interrupt:
        raise ValueError("--model and --cancel-on-interrupt apply with --url (training on the service)")
    args.out = args.out or "model.npz"
    return _lazy("client.local", "train")(args)


#: Help of --token by what the command calls (client.remote.token_of resolves the defaults).
TOKEN_HELP = {
    "predict": "the predict token (default: $MNIST_PREDICT_TOKEN; the write token is never sent here)",
    "read": "a token to read with: the predict or the write token (default: $MNIST_PREDICT_TOKEN,"
    " else $MNIST_API_TOKEN)",
    "write": "the write token (default: $MNIST_API_TOKEN)",
}


def add_remote_flags(p: argparse.ArgumentParser, use: str = "write") -> None:
    """Add --url and --token (its help by `use`: predict, read or write), and --json but for predict."""
    p.add_argument(
        "--url", default=argparse.SUPPRESS, help="the service (default: $MNIST_URL or http://127.0.0.1:8000)"
    )
    p.add_argument("--token", default=argparse.SUPPRESS, help=TOKEN_HELP[use])
    if use != "predict":
        p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every `mnist` subcommand."""
    parser = _Parser(prog="mnist", description="Train, serve and query a NumPy digit classifier.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model (in-process, or on the service with --url)")
    add_training_flags(train)
    train.add_argument("--out", help="model file to write (default: model.npz; with --url: none)")
    train.add_argument("--json", action="store_true", help="print one final JSON line")
    train.add_argument("--url", help="train on this service instead: submit a job and follow it")
    train.add_argument("--token", help="with --url: the write token (default: $MNIST_API_TOKEN)")
    train.add_argument(
        "--cancel-on-interrupt", action="store_true", help="with --url: Ctrl-C cancels the job too"
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    evaluate = sub.add_parser("evaluate", help="evaluate a model file on a dataset")
    evaluate.add_argument("--model", required=True, help="model file (.npz)")
    evaluate.add_argument("--dataset", default="mnist-sample")
    evaluate.add_argument("--split", choices=["test", "train", "all"], default="test")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=_lazy("client.local", "evaluate"))

    up_parser = sub.add_parser("up", help="run the whole stack locally (web, workers, Redis if needed)")
    up_parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    up_parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    up_parser.add_argument("--workers", type=int, default=2, help="training workers (default 2)")
    up_parser.add_argument(
        "--no-proxy",
        action="store_true",
        help="run without nginx in front: gunicorn faces clients directly (unprotected from slow clients)",
    )
    up_parser.set_defaults(run=_lazy("client.up", "command"))

    demo = sub.add_parser("demo", help="the service end to end: stack, training job, batch prediction, stop")
    demo.add_argument("--port", type=int, default=8000, help="HTTP port (a free one if taken)")
    demo.add_argument("--model", default="mnist", help="registry name to publish under (default mnist)")
    demo.add_argument("--epochs", type=int, help="override the default recipe's epochs (a quicker demo)")
    demo.set_defaults(run=_lazy("client.demo", "demo"))

    datasets = sub.add_parser(
        "datasets", help="list the built-in datasets; `datasets from-feedback NAME` builds one on the service"
    )
    datasets.add_argument("--json", action="store_true")
    datasets.set_defaults(run=_lazy("client.local", "datasets_command"))
    datasets_actions = datasets.add_subparsers(dest="datasets_action", metavar="ACTION")
    feedback = datasets_actions.add_parser(
        "from-feedback",
        help="store dataset NAME on the service: logged predictions with their feedback labels",
    )
    feedback.add_argument("name", metavar="NAME", help="the new dataset's name")
    feedback.add_argument("--model", default="mnist", help="whose prediction log (default: mnist)")
    feedback.add_argument("--version", type=int, help="only this version's predictions (default: all)")
    feedback.add_argument("--merge", metavar="DATASET", help="a built-in or uploaded dataset to add")
    add_remote_flags(feedback)
    feedback.set_defaults(run=_remote("datasets_from_feedback"))

    add_remote_commands(sub)
    return parser


def add_remote_commands(sub: argparse._SubParsersAction) -> None:
    """Add predict, models, jobs and alias: the commands that talk to the service."""
    predict = sub.add_parser(
        "predict", help="classify image files, IDX, CSV or NPZ files on the service (see docs/client.md)"
    )
    predict.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="PNG/JPEG files or folders, IDX, CSV, NPZ"
    )
    predict.add_argument("--model", default="mnist", help="registry name (default: mnist)")
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="this version (default: production, else the latest)")
    which.add_argument("--alias", help="the version this alias names, e.g. staging")
    predict.add_argument("--output", help="write the answers to FILE.csv or FILE.jsonl")
    predict.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_PREDICT_BATCH,
        help=f"images per request (default {DEFAULT_PREDICT_BATCH})",
    )
    predict.add_argument("--top-k", type=int, help="also give the k most probable labels")
    predict.add_argument("--probabilities", action="store_true", help="write p0…p9 too")
    predict.add_argument("--strict", action="store_true", help="stop at the first unreadable input")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    add_remote_flags(predict, "predict")
    predict.set_defaults(run=_remote("predict", "client.predict"))

    models = sub.add_parser("models", help="list the models on the service, or one model's versions")
    models.add_argument("name", nargs="?", metavar="NAME", help="a model: its versions and aliases")
    add_remote_flags(models, "read")
    models.set_defaults(run=_remote("models"))

    jobs = sub.add_parser("jobs", help="list training jobs; `jobs show ID`, `jobs cancel ID`")
    jobs.add_argument("--status", choices=["queued", "started", "finished", "failed", "canceled"])
    jobs.add_argument("--limit", type=int, help="at most this many (default 50)")
    add_remote_flags(jobs, "read")
    actions = jobs.add_subparsers(dest="jobs_action", metavar="ACTION")
    for name, what in (("show", "show one job"), ("cancel", "cancel a queued or running job")):
        action = actions.add_parser(name, help=what)
        action.add_argument("job_id", metavar="ID")
        add_remote_flags(action, "write" if name == "cancel" else "read")
    jobs.set_defaults(run=_remote("jobs"))

    alias = sub.add_parser("alias", help="point an alias (e.g. production) at a version, or delete it")
    alias_actions = alias.add_subparsers(dest="alias_action", required=True, metavar="ACTION")
    set_alias = alias_actions.add_parser("set", help="mnist alias set [--model M] ALIAS VERSION")
    set_alias.add_argument("alias", metavar="ALIAS")
    set_alias.add_argument("version", type=int, metavar="VERSION")
    delete_alias = alias_actions.add_parser("delete", help="mnist alias delete [--model M] ALIAS")
    delete_alias.add_argument("alias", metavar="ALIAS")
    for p in (set_alias, delete_alias):
        p.add_argument("--model", default="mnist", help="registry name (default: mnist)")
        add_remote_flags(p)
    alias.set_defaults(run=_remote("alias"))

    push = sub.add_parser("push", help="publish a model file (.npz) trained elsewhere as a new version")
    push.add_argument(
        "file", metavar="FILE", help="the model file: W1, b1, …, Wk, bk and meta (mnist train --out)"
    )
    push.add_argument("--model", default="mnist", help="registry name (default: mnist)")
    push.add_argument("--alias", help="also point this alias at the new version, e.g. staging")
    add_remote_flags(push)
    push.set_defaults(run=_remote("push"))
    add_canary_commands(sub)


def add_canary_commands(sub: argparse._SubParsersAction) -> None:
    """Add `mnist canary start|promote|rollback|status`: the rollout decisions."""
    canary = sub.add_parser(
        "canary", help="send part of the traffic to a new version, then promote or roll back"
    )
    actions = canary.add_subparsers(dest="canary_action", required=True, metavar="ACTION")
    start = actions.add_parser("start", help="mnist canary start VERSION --weight 0.2: split the alias")
    start.add_argument("version", type=int, metavar="VERSION")
    start.add_argument(
        "--weight", type=float, default=0.1, help="share of the traffic, 0–1 exclusive (default 0.1)"
    )
    promote = actions.add_parser("promote", help="the alias names the canary alone")
    rollback = actions.add_parser("rollback", help="the alias names the version before the canary alone")
    status = actions.add_parser("status", help="the alias's split, canary and recent decisions")
    rule = actions.add_parser(
        "rule", help="show, set (--min-feedback N --max-accuracy-drop X) or --delete the automatic rule"
    )
    rule.add_argument("--min-feedback", type=int, help="labels the canary and its base each need first")
    rule.add_argument("--max-accuracy-drop", type=float, help="how much lower the canary's accuracy may be")
    rule.add_argument(
        "--max-drift", type=float, help="roll back above this drift score (default: not judged)"
    )
    rule.add_argument("--disabled", action="store_true", help="keep the rule without applying it")
    rule.add_argument("--delete", action="store_true", help="remove the rule")
    rule.add_argument("--model", default="mnist", help="registry name (default: mnist)")
    rule.add_argument("--alias", help="with a new rule: the alias it watches (default: production)")
    add_remote_flags(rule, "write")
    for p in (start, promote, rollback, status):
        p.add_argument("--model", default="mnist", help="registry name (default: mnist)")
        p.add_argument("--alias", help="the alias rolled out (default: production)")
        if p is not status:
            p.add_argument("--reason", help="why, for the decision log")
        add_remote_flags(p, "read" if p is status else "write")
    canary.set_defaults(run=_remote("canary"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `mnist` command line; return its exit status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except _validation_error() as exc:
        print(
            f"mnist {args.command}: invalid options: {flatten(getattr(exc, 'messages', exc), _flag)}",
            file=sys.stderr,
        )
    except _domain_error() as exc:
        print(f"mnist {args.command}: {getattr(exc, 'message', exc)}", file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"mnist {args.command}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"mnist {args.command}: interrupted", file=sys.stderr)
        return 130
    return EXIT_ERROR


class _NotRaised(Exception):
    """Matches nothing: stands for an exception class whose module was never imported."""


def _flag(field: str) -> str:
    """Return the command-line spelling of a spec field (learning_rate → learning-rate)."""
    return field.replace("_", "-")


def _validation_error() -> type[Exception]:
    """Return marshmallow's ValidationError if marshmallow is loaded (it is slow to import, so lazily)."""
    marshmallow = sys.modules.get("marshmallow")
    return marshmallow.ValidationError if marshmallow is not None else _NotRaised


def _domain_error() -> type[Exception]:
    """Return shared.errors.MnistError if a command imported it (`mnist predict` needs no shared module)."""
    errors = sys.modules.get("shared.errors")
    return errors.MnistError if errors is not None else _NotRaised


if __name__ == "__main__":
    sys.exit(main())
