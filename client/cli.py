"""The `mnist` command: train and evaluate in-process, list datasets, and talk to the service.

Every error ends as one line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Sequence

from marshmallow import ValidationError

from shared.errors import MnistError

#: Exit status of a command that failed for a reason it explains.
EXIT_ERROR = 1
#: Exit status of a command line that does not parse.
EXIT_USAGE = 2


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
    """Add the flags of a training spec (the fields of shared.schemas.TrainingSpecSchema)."""
    p.add_argument("--dataset", default="mnist-sample", help="built-in name or path (default: mnist-sample)")
    p.add_argument("--recipe", choices=["seed", "default"], help="named defaults (see docs/recipes.md)")
    p.add_argument("--hidden", type=_hidden, help="hidden layer sizes, e.g. 256 or 256,128")
    p.add_argument("--optimizer", choices=["gd", "sgd", "momentum", "adam"])
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--batch-size", type=int, help="images per step; 0 = full batch")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int)
    length.add_argument("--iterations", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--validation-fraction", type=float)
    p.add_argument("--schedule", choices=["constant", "cosine"])
    p.add_argument("--augment", choices=["none", "shift", "affine"])
    p.add_argument("--patience", type=int, help="early stopping: epochs without improvement")
    p.add_argument("--dtype", choices=["float32", "float64"])


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every `mnist` subcommand."""
    from client import local, up

    parser = _Parser(prog="mnist", description="Train, serve and query a NumPy digit classifier.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model (in-process, or on the service with --url)")
    add_training_flags(train)
    train.add_argument("--out", default="model.npz", help="model file to write (default: model.npz)")
    train.add_argument("--json", action="store_true", help="print one final JSON line")
    train.set_defaults(run=local.train)

    evaluate = sub.add_parser("evaluate", help="evaluate a model file on a dataset")
    evaluate.add_argument("--model", required=True, help="model file (.npz)")
    evaluate.add_argument("--dataset", default="mnist-sample")
    evaluate.add_argument("--split", choices=["test", "train", "all"], default="test")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=local.evaluate)

    up_parser = sub.add_parser("up", help="run the whole stack locally (web, workers, Redis if needed)")
    up_parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    up_parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    up_parser.add_argument("--workers", type=int, default=2, help="training workers (default 2)")
    up_parser.set_defaults(run=up.command)

    datasets = sub.add_parser("datasets", help="list the built-in datasets")
    datasets.add_argument("--json", action="store_true")
    datasets.set_defaults(run=local.datasets_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `mnist` command line; return its exit status."""
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ValidationError as exc:
        print(f"mnist {args.command}: invalid options: {_flatten(exc.messages)}", file=sys.stderr)
    except MnistError as exc:
        print(f"mnist {args.command}: {exc.message}", file=sys.stderr)
    except (ValueError, OSError) as exc:
        print(f"mnist {args.command}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"mnist {args.command}: interrupted", file=sys.stderr)
        return 130
    return EXIT_ERROR


def _flatten(messages: object) -> str:
    if isinstance(messages, dict):
        return "; ".join(f"{str(k).replace('_', '-')}: {_flatten(v)}" for k, v in messages.items())
    if isinstance(messages, list):
        return ", ".join(_flatten(m) for m in messages)
    return str(messages)


if __name__ == "__main__":
    sys.exit(main())
