"""The Python client library and the `mnist` command line."""
