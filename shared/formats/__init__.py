"""File formats without NumPy: what a file's name and first bytes say, before any array is read.

One module per concept, each standard library only, because `mnist predict` imports them when it
starts (and must not import NumPy): `kinds` (which format a file is, from its name or its first
bytes), `idx` (IDX headers), `npy` (.npy headers, and plain integer or float arrays) and `csv`
(a digits CSV's first line: its columns, its header, its label's column). The readers that build
arrays, `client.inputs` and `shared.dataset_files`, sit on top; each keeps its own error messages
and its own set of accepted formats. This package imports none of its modules: import the one used.
"""
