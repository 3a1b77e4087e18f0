"""`mnist train`, `mnist evaluate`, `mnist datasets`: the in-process commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
from tqdm import tqdm

from client.cli import spec_from_args
from client.outputs import format_confusion
from shared import datasets, pipeline, scoring, serialization
from shared.training import Progress


def train(args: argparse.Namespace) -> int:
    """Train a spec in-process, write the model file, report the metrics."""
    spec = pipeline.load_spec(spec_from_args(args))
    run = pipeline.prepare(spec)
    quiet = args.json or not sys.stderr.isatty()
    bar = tqdm(
        total=run.trainer.total_iterations,
        unit="step",
        disable=quiet,
        desc=f"train {run.dataset.name}",
        leave=True,
    )

    def on_progress(p: Progress) -> None:
        bar.update(p.iteration - bar.n)
        if p.end_of_epoch:
            postfix = {"loss": f"{p.loss:.4f}", "acc": f"{p.train_accuracy:.3f}"}
            if p.val_accuracy is not None:
                postfix["val"] = f"{p.val_accuracy:.3f}"
            bar.set_postfix(postfix, refresh=False)

    result = run.trainer.run(on_progress=on_progress)
    bar.close()
    metrics = pipeline.evaluate(run, result)
    serialization.save_model(args.out, result.params, pipeline.model_meta(run, result, metrics))
    summary = {
        **metrics,
        "out": args.out,
        "dataset": run.dataset.name,
        "dataset_digest": run.dataset.digest,
        "config": run.config.to_dict(),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    return 0


def _print_summary(s: dict[str, Any]) -> None:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f} %"

    print(f"model written to {s['out']}")
    print(f"  train accuracy {pct(s['train_accuracy'])}  ({s['train_size']} images)")
    print(f"  val accuracy   {pct(s['val_accuracy'])}  ({s['val_size']} images)")
    print(f"  test accuracy  {pct(s['test_accuracy'])}  ({s['test_size']} images)")
    print(f"  {s['seconds']:.1f} s, {s['samples_per_second']:,.0f} samples/s, {s['iterations']} steps")


def evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model file on a dataset split; print accuracy and the confusion matrix."""
    params, meta = serialization.load_model(args.model)
    data = datasets.load(args.dataset)
    parts = []
    if args.split in ("test", "all"):
        if data.x_test is None or data.y_test is None:
            if args.split == "test":
                raise ValueError(f"dataset {data.name} has no test split: use --split train")
        else:
            parts.append((data.x_test, data.y_test))
    if args.split in ("train", "all"):
        parts.append((data.x_train, data.y_train))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    figures = scoring.score(y, scoring.classify(scoring.predictor(params), x).argmax(axis=1))
    report = {
        "model": args.model,
        "dataset": data.name,
        "dataset_digest": data.digest,
        "split": args.split,
        "images": figures.count,
        "accuracy": figures.accuracy,
        "per_class_accuracy": figures.per_class,  # null for a class the split does not hold
        "confusion_matrix": figures.confusion.tolist(),
        "trained_on": meta.get("dataset", {}).get("name"),
    }
    if args.json:
        print(json.dumps(report))
        return 0
    accuracy = "-" if figures.accuracy is None else f"{100 * figures.accuracy:.2f} %"
    print(f"{args.model} on {data.name} ({args.split}, {figures.count} images): accuracy {accuracy}")
    print(format_confusion(figures.confusion))
    return 0


def datasets_command(args: argparse.Namespace) -> int:
    """List the built-in datasets and whether each is available here."""
    entries = datasets.catalogue(local=True)
    if args.json:
        print(json.dumps(entries))
        return 0
    for e in entries:
        state = "available" if e.get("available") else "not available"
        print(f"{e['name']:<15} {state:<14} {e.get('description', '')}")
        if not e.get("available") and e.get("how_to_get"):
            print(f"{'':<15} {e['how_to_get']}")
    return 0
