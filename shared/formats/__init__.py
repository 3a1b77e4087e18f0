"""File formats without NumPy: what a file's headers declare, before any array is read.

One module per concept, each standard library only, because `mnist predict` imports them when it
starts (and must not import NumPy): `idx` (IDX headers) and `npy` (.npy headers, and plain
integer or float arrays). The readers that build arrays, `client.inputs`,
`shared.dataset_files` and the predictor's `decode`, sit on top; each keeps its own error
messages. This package imports none of its modules: import the one used.
"""
