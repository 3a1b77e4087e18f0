"""`mnist predict`: classify every image of the inputs on the service, write the answers, report accuracy.

The command is a pipeline. Each batch is sent on its own thread, IN_FLIGHT at a time: while the
service computes one batch, the command reads and sends the next, and writes the answers of the
last. For IDX files and uint8 NPZ files it imports neither NumPy nor requests: the file's bytes
are the request bodies (client/inputs.py), they go out through the standard library
(client/transport.py), the answers come back as .npy (client/answers.py), and the accuracy and
confusion matrix are counted in plain lists. Most of a 10,000-image run is then the service's
own work, not the interpreter's start-up.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections import deque
from typing import Any

from client.answers import NPY, Answers, parse
from client.defaults import CLASSES
from client.inputs import Batch, InputError, discover, read
from client.outputs import Writer, format_confusion, open_writer, output_format
from client.remote import PREDICT, NoBar, bar_of, command, show_progress, token_of, url_of
from client.routes import predict_path
from client.transport import Transport

#: Prediction requests in flight at once: one is computed while the next is read and sent.
IN_FLIGHT = 2
#: Content type of a prediction request: the images as raw uint8 bytes, n × 784.
RAW_IMAGES = "application/octet-stream"


class Tally:
    """Counts of what was predicted: images, versions that answered, and the labelled confusion matrix."""

    def __init__(self) -> None:
        self.images = 0
        self.versions: set[int] = set()
        self.confusion = [[0] * CLASSES for _ in range(CLASSES)]  # rows: true label, columns: predicted

    def add(self, batch: Batch, answers: Answers) -> None:
        """Count a batch and its answers."""
        self.images += len(batch)
        self.versions.add(answers.version)
        for truth, label in zip(batch.labels, answers.labels, strict=True):
            if truth >= 0:
                self.confusion[truth][label] += 1

    def labelled(self) -> int:
        """Return how many of the images had a known label."""
        return sum(map(sum, self.confusion))

    def right(self) -> int:
        """Return how many labelled images were predicted right."""
        return sum(self.confusion[c][c] for c in range(CLASSES))


class Request(threading.Thread):
    """One batch's prediction request, sent and parsed on its own thread; `wait()` waits for it."""

    def __init__(self, transport: Transport, path: str, batch: Batch, accept: str) -> None:
        # A daemon: a command that stops (an error, Ctrl-C) does not wait for answers it will not use.
        super().__init__(name=f"predict {batch.sources[0]}#{batch.indices[0]}", daemon=True)
        self.transport, self.path, self.batch = transport, path, batch
        self.headers = {"Content-Type": RAW_IMAGES, "Accept": accept}
        self.result: Answers | None = None
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        try:
            body, headers = self.transport.post(self.path, self.batch.pixels, self.headers)
            self.result = parse(body, headers, len(self.batch))
        except Exception as exc:  # raised again in the command's thread, by wait()
            self.error = exc

    def wait(self) -> tuple[Batch, Answers]:
        """Wait for the answers; return the batch and its answers, or raise what the request raised."""
        self.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.batch, self.result


@command
def predict(args: argparse.Namespace) -> int:
    """Classify every image of the inputs on the service; write the answers; report accuracy if labelled."""
    kind = output_format(args.output)  # a wrong --output is refused before any input is read
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.top_k is not None and not 1 <= args.top_k <= CLASSES:
        raise ValueError(f"--top-k must be from 1 to {CLASSES}, got {args.top_k}")
    skipped: list[str] = []
    bar: Any = NoBar()

    def on_error(exc: InputError) -> None:
        if args.strict:
            raise exc
        bar.write(f"mnist predict: skipped {exc}", file=sys.stderr)  # above the progress bar, if any
        skipped.append(exc.path)

    inputs = discover(args.inputs, on_error)
    if not inputs:
        raise ValueError("nothing predicted: no readable input")
    counts = [i.count for i in inputs]
    total = sum(c for c in counts if c is not None) if None not in counts else None
    path = predict_path(args.model, args.version, args.alias)
    # JSON Lines keep the service's shortest float32 digits, which only its JSON answer spells.
    accept = "application/json" if kind == "jsonl" else NPY
    transport = Transport(url_of(args), token_of(args, PREDICT))
    writer = open_writer(args.output, args.probabilities, args.top_k)
    tally = Tally()
    bar = bar_of(total, show_progress(args))
    try:
        pending: deque[Request] = deque()
        for batch in read(inputs, args.batch_size, on_error):
            answered = pending.popleft().wait() if len(pending) == IN_FLIGHT else None
            # The next request goes out as soon as one is answered, before that one's answers are written.
            pending.append(Request(transport, path, batch, accept))
            if answered is not None:
                _record(*answered, writer, tally, bar)
        for request in pending:
            _record(*request.wait(), writer, tally, bar)
    finally:
        bar.close()
        writer.close()
        transport.close()
    if not tally.images:
        raise ValueError("nothing predicted: no readable image in the inputs")
    _report(args, tally, skipped)
    return 0


def _record(batch: Batch, answers: Answers, writer: Writer, tally: Tally, bar: Any) -> None:
    writer.write(batch, answers)
    tally.add(batch, answers)
    bar.update(len(batch))


def _report(args: argparse.Namespace, tally: Tally, skipped: list[str]) -> None:
    versions = ", ".join(f"v{v}" for v in sorted(tally.versions)) or "-"
    where = f", written to {args.output}" if args.output else ""
    more = f"; {len(skipped)} input(s) skipped" if skipped else ""
    print(f"{tally.images:,} images predicted by {args.model} {versions}{where}{more}")
    labelled = tally.labelled()
    if labelled:
        right = tally.right()
        print(f"accuracy {100 * right / labelled:.2f} % ({right:,} of {labelled:,} labelled images)")
        print(format_confusion(tally.confusion))
