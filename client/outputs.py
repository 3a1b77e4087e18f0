"""Where `mnist predict` writes its answers (CSV, JSON Lines or stdout), and its confusion matrix."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Protocol

from client.answers import Answers
from client.defaults import CLASSES
from client.inputs import Batch

#: Output formats by file ending.
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class Writer(Protocol):
    """Writes the answers for one batch at a time."""

    def write(self, batch: Batch, answers: Answers) -> None: ...

    def close(self) -> None: ...


def output_format(path: str | None) -> str:
    """Return "csv", "jsonl" or "lines" (stdout) for an --output path; ValueError for another ending."""
    if path is None:
        return "lines"
    kind = next((k for ending, k in FORMATS.items() if path.lower().endswith(ending)), None)
    if kind is None:
        raise ValueError(f"--output {path}: name a .csv or .jsonl file")
    return kind


def open_writer(path: str | None, probabilities: bool, top_k: int | None) -> Writer:
    """Return the writer for `path` (.csv, .jsonl), or the stdout lines when `path` is None."""
    kind = output_format(path)
    if path is None:
        return LinesWriter(sys.stdout, top_k)
    stream = Path(path).open("w", newline="", encoding="utf-8")  # noqa: SIM115 (the writer closes it)
    if kind == "csv":
        return CsvWriter(stream, probabilities, top_k)
    return JsonlWriter(stream, probabilities, top_k)


class CsvWriter:
    """A header, then `source,index,label,confidence` (`p0…p9` with probabilities, `top1…` with top-k)."""

    def __init__(self, stream: IO[str], probabilities: bool, top_k: int | None) -> None:
        self.stream, self.probabilities, self.top_k = stream, probabilities, top_k
        header = ["source", "index", "label", "confidence"]
        if probabilities:
            header += [f"p{c}" for c in range(CLASSES)]
        for i in range(1, (top_k or 0) + 1):
            header += [f"top{i}", f"top{i}_probability"]
        stream.write(",".join(header) + "\n")
        self.quoted: dict[str, str] = {}

    def _quote(self, source: str) -> str:
        """Return a file name as a CSV field (quoted only when it holds a comma, quote or line break)."""
        field = self.quoted.get(source)
        if field is None:
            needs = any(c in source for c in ',"\r\n')
            field = '"' + source.replace('"', '""') + '"' if needs else source
            self.quoted[source] = field
        return field

    def write(self, batch: Batch, answers: Answers) -> None:
        # One format string per row, not the csv module: 10,000 rows take milliseconds, not 100s of them.
        columns: list[Iterable[Any]] = [
            [self._quote(s) for s in batch.sources],
            batch.indices,
            answers.labels,
            answers.confidence(),
        ]
        fmt = "{},{},{},{:.6f}"
        if self.probabilities:
            columns.extend(zip(*answers.probabilities, strict=True))  # p0…p9, one column each
            fmt += ",{:.6f}" * CLASSES
        if self.top_k:
            labels, probs = answers.top_k(self.top_k)
            for k in range(self.top_k):
                columns += [[row[k] for row in labels], [row[k] for row in probs]]
            fmt += ",{},{:.6f}" * self.top_k
        self.stream.write("".join(map((fmt + "\n").format, *columns)))  # the columns are of one length

    def close(self) -> None:
        self.stream.close()


class JsonlWriter:
    """One JSON object per image: source, index, label, confidence, model_version (and the options')."""

    def __init__(self, stream: IO[str], probabilities: bool, top_k: int | None) -> None:
        self.stream, self.probabilities, self.top_k = stream, probabilities, top_k

    def write(self, batch: Batch, answers: Answers) -> None:
        import orjson

        top = answers.top_k(self.top_k) if self.top_k else None
        lines = []
        for n, (source, index, label, confidence, truth) in enumerate(
            zip(batch.sources, batch.indices, answers.labels, answers.confidence(), batch.labels, strict=True)
        ):
            row: dict[str, Any] = {
                "source": source,
                "index": index,
                "label": label,
                "confidence": confidence,
                "model_version": answers.version,
            }
            if self.probabilities:
                row["probabilities"] = answers.probabilities[n]
            if top is not None:
                row["top_k"] = [
                    {"label": k, "probability": p} for k, p in zip(top[0][n], top[1][n], strict=True)
                ]
            if truth >= 0:
                row["true_label"] = truth
            lines.append(orjson.dumps(row))
        self.stream.write(b"\n".join(lines).decode() + "\n")

    def close(self) -> None:
        self.stream.close()


class LinesWriter:
    """One line per image on stdout: where it came from, the label and its probability."""

    def __init__(self, stream: IO[str], top_k: int | None) -> None:
        self.stream, self.top_k = stream, top_k

    def write(self, batch: Batch, answers: Answers) -> None:
        top = answers.top_k(self.top_k) if self.top_k else None
        lines = []
        for n, (source, index, label, confidence) in enumerate(
            zip(batch.sources, batch.indices, answers.labels, answers.confidence(), strict=True)
        ):
            where = source if source.lower().endswith((".png", ".jpg", ".jpeg")) else f"{source}#{index}"
            line = f"{where}\t{label}\t{100 * confidence:.1f} %"
            if top is not None:
                line += "\t" + ", ".join(
                    f"{k} {100 * p:.1f} %" for k, p in zip(top[0][n], top[1][n], strict=True)
                )
            lines.append(line)
        self.stream.write("\n".join(lines) + "\n")

    def close(self) -> None:
        self.stream.flush()


def format_confusion(cm: Iterable[Iterable[int]]) -> str:
    """Return a confusion matrix (rows: true, columns: predicted; lists or an array) as aligned text."""
    rows = [[int(v) for v in row] for row in cm]
    width = max(4, len(str(max(max(row) for row in rows))) + 1)
    head = "true\\pred" + "".join(f"{c:>{width}}" for c in range(len(rows[0])))
    lines = [f"{r:>9}" + "".join(f"{v:>{width}}" for v in row) for r, row in enumerate(rows)]
    return "\n".join([head, *lines])
