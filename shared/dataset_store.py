"""Uploaded datasets, kept in Redis as compressed .npz with a JSON description.

The API validates an upload with `shared.datasets.parse_bytes` and stores it here; workers read
it back through `DatasetStore.get`, which `shared.datasets.load` calls for names that are
neither built in nor a path.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis

from shared import datasets
from shared.errors import DatasetExists, DatasetNotFound
from shared.keys import Keys


class DatasetStore:
    """Uploaded datasets under one key prefix."""

    def __init__(self, conn: redis.Redis, keys: Keys) -> None:
        self.conn = conn
        self.keys = keys

    def put(
        self, data: datasets.Dataset, *, replace: bool = True, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Store an uploaded dataset under its name (DatasetExists if taken and not `replace`).

        `extra` (JSON) joins its description, e.g. the `origin` of a dataset built from feedback.
        """
        if data.name in datasets.BUILTIN_NAMES:
            raise DatasetExists(f"{data.name!r} is a built-in dataset name")
        arrays = {"x_train": data.x_train, "y_train": data.y_train}
        if data.x_test is not None and data.y_test is not None:
            arrays |= {"x_test": data.x_test, "y_test": data.y_test}
        buf = io.BytesIO()
        np.savez_compressed(buf, allow_pickle=False, **arrays)  # type: ignore[arg-type]
        blob = buf.getvalue()
        info = {
            **data.info(),
            **(extra or {}),
            "stored_bytes": len(blob),
            "uploaded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # The blob first, then the entry that names it: a reader never finds a name without data.
        # WATCH makes "not taken" and the write one step when two uploads race for a name.
        with self.conn.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.keys.datasets())
                    if not replace and pipe.hexists(self.keys.datasets(), data.name):
                        raise DatasetExists(f"a dataset named {data.name!r} is already uploaded")
                    pipe.multi()
                    pipe.set(self.keys.dataset_blob(data.name), blob)
                    pipe.hset(self.keys.datasets(), data.name, json.dumps(info))
                    pipe.execute()
                    return info
                except redis.WatchError:
                    continue

    def exists(self, name: str) -> bool:
        """Return True when an uploaded dataset `name` is stored."""
        return bool(self.conn.hexists(self.keys.datasets(), name))

    def get(self, name: str) -> datasets.Dataset | None:
        """Return the uploaded dataset `name`, or None when there is none."""
        blob = self.conn.get(self.keys.dataset_blob(name))
        raw_info = self.conn.hget(self.keys.datasets(), name)
        if not isinstance(blob, bytes) or raw_info is None:
            return None
        info = json.loads(raw_info)
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return datasets.make_dataset(
            name,
            arrays["x_train"],
            arrays["y_train"],
            arrays.get("x_test"),
            arrays.get("y_test"),
            source=f"upload ({info.get('source', 'unknown')})",
            classes=tuple(info.get("classes", datasets.DIGITS)),
        )

    def info(self, name: str) -> dict[str, Any]:
        """Return the description of an uploaded dataset; DatasetNotFound if absent."""
        raw = self.conn.hget(self.keys.datasets(), name)
        if raw is None:
            raise DatasetNotFound(f"no uploaded dataset named {name!r}")
        return json.loads(raw)

    def list(self) -> list[dict[str, Any]]:
        """Return the descriptions of every uploaded dataset, by name."""
        entries = self.conn.hgetall(self.keys.datasets())
        return [json.loads(entries[k]) for k in sorted(entries)]

    def delete(self, name: str) -> None:
        """Remove an uploaded dataset; DatasetNotFound if absent."""
        with self.conn.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.datasets(), name)
            pipe.delete(self.keys.dataset_blob(name))
            removed, _ = pipe.execute()
        if not removed:
            raise DatasetNotFound(f"no uploaded dataset named {name!r}")
