"""File formats without NumPy: what a file's headers declare, before any array is read.

One module per concept, each standard library only, because `mnist predict` imports them when it
starts (and must not import NumPy): `idx` (IDX headers), `npy` (.npy headers, and plain integer
or float arrays) and `csv` (a digits CSV's first line: its columns, its header, its label's
column). The readers that build arrays, `client.inputs`, `shared.dataset_files` and the
predictor's `decode`, sit on top; each keeps its own error messages and its own set of accepted
layouts. This package imports none of its modules: import the one used.
"""
