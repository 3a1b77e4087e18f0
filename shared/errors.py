"""Domain errors: small named exceptions raised inside, mapped to HTTP at the edge.

Each carries the HTTP status the web layer answers with, so `services/web/errors.py` maps them in
one handler; the core never imports Flask.
"""

from __future__ import annotations


class MnistError(Exception):
    """Base of every domain error; `status` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, errors: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors


class InvalidInput(MnistError):
    """Input that is malformed or out of bounds (a request body, a spec, an array)."""

    status = 400


class DatasetError(InvalidInput):
    """A dataset file that cannot be read: names the file and the problem."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class DatasetNotFound(MnistError):
    """A dataset name that is neither built in, uploaded, nor an existing path."""

    status = 404


class DatasetExists(MnistError):
    """An upload under a name that is built in."""

    status = 409


class ModelNotFound(MnistError):
    """A model name with no published version."""

    status = 404


class VersionNotFound(MnistError):
    """A version number that the model does not have."""

    status = 404


class AliasNotFound(MnistError):
    """An alias that the model does not have."""

    status = 404


class ShadowNotFound(MnistError):
    """A model without a shadow version (clearing one)."""

    status = 404


class RuleNotFound(MnistError):
    """A model without an automatic rollout rule (reading or clearing it)."""

    status = 404


class VersionInUse(MnistError):
    """Deleting a version that an alias still points at."""

    status = 409


class CorruptModel(MnistError):
    """A stored blob whose sha256 does not match its record, or that does not parse."""

    # A known server-side fault, not a bug: 503 keeps 500 for the unexpected (and alerts).
    status = 503


class JobNotFound(MnistError):
    """A job id that RQ does not know (never existed or expired)."""

    status = 404


class Unauthorized(MnistError):
    """A write without a bearer token."""

    status = 401


class Forbidden(MnistError):
    """A write with a wrong bearer token."""

    status = 403


class PayloadTooLarge(MnistError):
    """A body or batch above the configured limit."""

    status = 413


class UnsupportedMediaType(MnistError):
    """A body in a content type the route does not read."""

    status = 415


class ServiceUnavailable(MnistError):
    """Redis is unreachable and nothing held in memory can answer."""

    status = 503


class ReplicationTimeout(MnistError):
    """A write that fewer replicas than MNIST_MIN_REPLICAS acknowledged within MNIST_REPLICA_TIMEOUT."""

    # Redis' replicas are behind or gone: a fault of the deployment, and a retry may succeed.
    status = 503


class RolloutConflict(MnistError):
    """A rollout decision the alias's state does not allow (no canary to promote, one already running)."""

    status = 409
