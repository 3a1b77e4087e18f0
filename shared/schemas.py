"""Marshmallow schemas shared by the command line, the HTTP API and the worker.

`TrainingSpecSchema` is generated from `shared.spec.FIELDS`, the one definition of a training
job: the same field names as `mnist train`'s flags, with bounds that keep any one job inside a
worker's memory budget (docs/reliability.md). Both the CLI and `POST /v1/jobs` validate through
it before anything runs.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shared.spec import FIELDS, LENGTH_FIELDS, NAME_PATTERN, Field, name_problem


class RegistryName(validate.Validator):
    """Refuse a string that is not a registry name (`shared.spec.valid_name`), saying why."""

    #: Read by apispec: the OpenAPI document shows the pattern (JSON Schema searches, hence ^…$).
    regex = NAME_PATTERN

    def __call__(self, value: Any) -> Any:
        problem = name_problem(value)
        if problem is not None:
            raise ValidationError(problem)
        return value


#: The validator of a model, alias or dataset name.
name_field = RegistryName()


def schema_field(f: Field) -> fields.Field:
    """Return the marshmallow field of a spec field: its type, bounds, choices, default, description."""
    checks: list[validate.Validator] = []
    if f.choices:
        checks.append(validate.OneOf(f.choices))
    if f.length is not None:
        checks.append(validate.Length(*f.length))
    if f.registry_name:
        checks.append(name_field)
    if f.minimum is not None or f.maximum is not None:
        checks.append(validate.Range(f.minimum, f.maximum, min_inclusive=not f.exclusive_minimum))
    metadata = {"description": f.help} if f.help else {}
    options: dict[str, Any] = {"load_default": f.default, "metadata": metadata}
    if f.items is None:
        return _typed(f.kind, validate=checks, **options)
    # A list: the bounds apply to each item, `items` to the length of the list.
    return fields.List(_typed(f.kind, validate=checks), validate=validate.Length(*f.items), **options)


def _typed(kind: type, **options: Any) -> fields.Field:
    """Return a marshmallow Integer, Float (finite) or String field."""
    if kind is int:
        return fields.Integer(**options)
    if kind is float:
        return fields.Float(allow_nan=False, **options)
    return fields.String(**options)


#: One marshmallow field per `shared.spec.Field` (a generated class: typed Any for subclassing).
_SpecFields: Any = Schema.from_dict({f.name: schema_field(f) for f in FIELDS}, name="TrainingSpecFields")


class TrainingSpecSchema(_SpecFields):
    """A training job: which model to publish, on which data, with which recipe and overrides."""

    class Meta:
        unknown = RAISE

    @validates_schema
    def _one_length(self, data: dict[str, Any], **_: Any) -> None:
        first, second = LENGTH_FIELDS
        if data.get(first) is not None and data.get(second) is not None:
            raise ValidationError(f"give {first} or {second}, not both", second)
        if data.get("optimizer") == "gd" and data.get("batch_size") not in (None, 0):
            raise ValidationError("optimizer 'gd' is full-batch: batch_size must be 0", "batch_size")
