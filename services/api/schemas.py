"""Request and response schemas of the HTTP API (jobs, models, datasets).

The training spec itself is `shared.schemas.TrainingSpecSchema`; `JobSpecSchema` narrows it for
HTTP (a dataset is a name, never a server path). Response schemas drive both the OpenAPI
document and what a view returns: fields not declared here are not sent.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from shared.datasets import UPLOAD_KINDS
from shared.jobs import JobState
from shared.rollout import MAX_MIN_FEEDBACK
from shared.schemas import TrainingSpecSchema, name_field
from shared.splits import MAX_VERSIONS

#: Longest reason a rollout decision records (characters).
MAX_REASON = 500


def split_field(**kwargs: Any) -> fields.Dict:
    """Return the field of a split as shown: {"4": 0.9, "5": 0.1}."""
    return fields.Dict(keys=fields.String(), values=fields.Float(), **kwargs)


def splits_field() -> fields.Dict:
    """Return the field of a model's splits: alias -> split."""
    description = "aliases naming several versions: alias -> {version: weight}"
    return fields.Dict(keys=fields.String(), values=split_field(), metadata={"description": description})


def aliases_field() -> fields.Dict:
    """Return the field of a model's aliases: alias -> version (a split's primary)."""
    return fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "a split's alias: its primary"},
    )


#: Most jobs one `GET /v1/jobs` returns.
MAX_JOB_LIST = 500


# --- jobs -------------------------------------------------------------------------------------


class JobSpecSchema(TrainingSpecSchema):
    """A training job as `POST /v1/jobs` takes it: a dataset is a built-in or uploaded name."""

    dataset = fields.String(
        load_default="mnist-sample",
        validate=name_field,  # the registry's rule: refused here, not after the job has trained
        metadata={"description": "built-in or uploaded dataset name (GET /v1/datasets)"},
    )

    def on_bind_field(self, field_name: str, field_obj: fields.Field) -> None:
        """Take only JSON integers for integer fields (not 1.5, "3" or true, which would coerce)."""
        for f in (field_obj, getattr(field_obj, "inner", None)):
            if isinstance(f, fields.Integer):
                f.strict = True


class JobQuerySchema(Schema):
    status = fields.String(
        validate=validate.OneOf([s.value for s in JobState]),
        metadata={"description": "only jobs in this state"},
    )
    limit = fields.Integer(
        load_default=50, validate=validate.Range(1, MAX_JOB_LIST), metadata={"description": "most jobs"}
    )


class ProgressSchema(Schema):
    fraction = fields.Float(metadata={"description": "share of the planned iterations done, 0-1"})
    epoch = fields.Integer()
    iteration = fields.Integer()
    total_iterations = fields.Integer()
    loss = fields.Float(allow_none=True)
    train_accuracy = fields.Float(allow_none=True)
    val_accuracy = fields.Float(allow_none=True)
    val_loss = fields.Float(allow_none=True)
    learning_rate = fields.Float(allow_none=True)


class JobResultSchema(Schema):
    model = fields.String()
    version = fields.Integer(allow_none=True)
    metrics = fields.Dict(metadata={"description": "final accuracies, sizes, seconds"})


class JobSchema(Schema):
    id = fields.String()
    status = fields.String(metadata={"description": "queued, started, finished, failed or canceled"})
    spec = fields.Dict(allow_none=True, metadata={"description": "the submitted training spec"})
    progress = fields.Nested(ProgressSchema, allow_none=True)
    curve = fields.List(fields.Dict(), metadata={"description": "per-epoch history so far"})
    result = fields.Nested(JobResultSchema, allow_none=True)
    error = fields.String(allow_none=True, metadata={"description": "one line, when failed"})
    attempts = fields.Integer()
    resumed_from_iteration = fields.Integer(allow_none=True)
    dataset = fields.Dict(allow_none=True, metadata={"description": "name, digest and sizes once loaded"})
    created_at = fields.String(allow_none=True)
    started_at = fields.String(allow_none=True)
    ended_at = fields.String(allow_none=True)


# --- models -----------------------------------------------------------------------------------


class DatasetRefSchema(Schema):
    name = fields.String()
    digest = fields.String(allow_none=True)
    source = fields.String(allow_none=True)


class ModelSummarySchema(Schema):
    name = fields.String()
    latest = fields.Integer(allow_none=True)
    versions = fields.Integer(metadata={"description": "how many versions are kept"})
    aliases = aliases_field()
    splits = splits_field()


class VersionSummarySchema(Schema):
    version = fields.Integer()
    created_at = fields.String()
    sha256 = fields.String()
    size = fields.Integer(metadata={"description": "bytes of the .npz"})
    aliases = fields.List(fields.String())
    job_id = fields.String(allow_none=True)
    dataset = fields.Nested(DatasetRefSchema, allow_none=True)
    metrics = fields.Dict(metadata={"description": "accuracies (train, val, test) and training time"})


class ModelSchema(Schema):
    name = fields.String()
    latest = fields.Integer(allow_none=True)
    aliases = aliases_field()
    splits = splits_field()
    versions = fields.List(fields.Nested(VersionSummarySchema), metadata={"description": "oldest first"})


class LineageSchema(Schema):
    source = fields.String(allow_none=True, metadata={"description": "job (trained here) or import"})
    sha256 = fields.String(allow_none=True, metadata={"description": "an import: the uploaded file's sha256"})
    job_id = fields.String(allow_none=True)
    dataset = fields.Nested(DatasetRefSchema, allow_none=True)
    recipe = fields.String(allow_none=True)
    config = fields.Dict(metadata={"description": "the full training config the job ran"})
    spec = fields.Dict(allow_none=True, metadata={"description": "the spec as submitted"})


class VersionSchema(VersionSummarySchema):
    model = fields.String()
    architecture = fields.Dict(metadata={"description": "layer sizes and activations"})
    history = fields.List(fields.Dict(), metadata={"description": "learning curve, one entry per epoch"})
    lineage = fields.Nested(LineageSchema)
    weights_url = fields.String()


class AliasBodySchema(Schema):
    class Meta:
        unknown = RAISE

    version = fields.Integer(
        strict=True, validate=validate.Range(min=1), metadata={"description": "one version"}
    )
    versions = fields.Dict(
        keys=fields.String(),
        values=fields.Raw(),
        metadata={
            "description": f"or a traffic split {{version: weight}}: 1 to {MAX_VERSIONS} versions,"
            " weights > 0, normalised to sum to 1",
            "example": {"4": 0.9, "5": 0.1},
        },
    )
    reason = fields.String(
        validate=validate.Length(max=MAX_REASON),
        metadata={"description": "a split: why, for the decision log"},
    )

    @validates_schema
    def _one_of(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("version" in data) == ("versions" in data):
            raise ValidationError('send "version" (one version) or "versions" (a split)', "_schema")


class AliasSchema(Schema):
    model = fields.String()
    alias = fields.String()
    version = fields.Integer(metadata={"description": "the version (a split: its primary, the heaviest)"})
    previous = fields.Integer(allow_none=True, metadata={"description": "where the alias pointed before"})
    split = split_field(allow_none=True, metadata={"description": "{version: weight}, or null"})


class ImportQuerySchema(Schema):
    alias = fields.String(
        validate=name_field, metadata={"description": "also point this alias at the version"}
    )


# --- rollouts ---------------------------------------------------------------------------------

#: Most decisions one `GET …/rollout` returns.
MAX_DECISIONS = 200


class RolloutBodySchema(Schema):
    class Meta:
        unknown = RAISE

    action = fields.String(required=True, validate=validate.OneOf(["canary", "promote", "rollback"]))
    version = fields.Integer(strict=True, metadata={"description": "canary: the version that gets `weight`"})
    weight = fields.Float(metadata={"description": "canary: its share of the traffic, 0 < weight < 1"})
    alias = fields.String(
        load_default="production", validate=name_field, metadata={"description": "the alias rolled out"}
    )
    reason = fields.String(
        load_default="",
        validate=validate.Length(max=MAX_REASON),
        metadata={"description": "why, for the log"},
    )


class RolloutQuerySchema(Schema):
    alias = fields.String(load_default="production", validate=name_field)
    limit = fields.Integer(
        load_default=20, validate=validate.Range(1, MAX_DECISIONS), metadata={"description": "most decisions"}
    )


class CanarySchema(Schema):
    version = fields.Integer()
    weight = fields.Float(metadata={"description": "its share of the alias's traffic"})
    base = fields.Integer(metadata={"description": "the version serving the rest"})


class DecisionSchema(Schema):
    id = fields.String(metadata={"description": "the stream entry's id"})
    time = fields.String()
    action = fields.String(metadata={"description": "canary, promote, rollback or split"})
    version = fields.Integer(allow_none=True)
    alias = fields.String()
    reason = fields.String()
    actor = fields.String(metadata={"description": "api or rule"})
    split = split_field(metadata={"description": "the alias's split after the decision"})


class RolloutSchema(Schema):
    model = fields.String()
    alias = fields.String()
    split = split_field(metadata={"description": "{version: weight} now; {} if the alias is not set"})
    canary = fields.Nested(CanarySchema, allow_none=True)
    decisions = fields.List(
        fields.Nested(DecisionSchema), metadata={"description": "newest first, every alias"}
    )


class RuleBodySchema(Schema):
    class Meta:
        unknown = RAISE

    min_feedback = fields.Integer(
        required=True,
        strict=True,
        validate=validate.Range(1, MAX_MIN_FEEDBACK),
        metadata={"description": "feedback labels the canary and its base each need before a decision"},
    )
    max_accuracy_drop = fields.Float(
        required=True,
        validate=validate.Range(0, 1),
        metadata={"description": "how much lower than the base's the canary's online accuracy may be"},
    )
    max_drift = fields.Float(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=0, min_inclusive=False),
        metadata={"description": "roll back above this drift score of the canary (null: drift not judged)"},
    )
    enabled = fields.Boolean(load_default=True, metadata={"description": "false: kept, not applied"})
    alias = fields.String(
        load_default="production", validate=name_field, metadata={"description": "the alias watched"}
    )


class VerdictSchema(Schema):
    action = fields.String(
        allow_none=True, metadata={"description": "promote, rollback or null (nothing yet)"}
    )
    reason = fields.String(metadata={"description": "why, with the figures"})


class RuleSchema(RuleBodySchema):
    class Meta:
        unknown = RAISE

    model = fields.String()
    now = fields.Nested(VerdictSchema, metadata={"description": "what the rule would decide now"})


# --- datasets ---------------------------------------------------------------------------------


class DatasetOriginSchema(Schema):
    kind = fields.String(metadata={"description": "feedback: built from logged predictions' feedback labels"})
    model = fields.String()
    version = fields.Integer(allow_none=True, metadata={"description": "null: every version's"})
    merged = fields.String(allow_none=True, metadata={"description": "the dataset merged in, if any"})
    feedback_images = fields.Integer(metadata={"description": "images taken from the log"})
    scanned = fields.Integer(metadata={"description": "log entries read"})
    skipped = fields.Integer(metadata={"description": "labelled entries that could not be read"})


class DatasetSchema(Schema):
    name = fields.String()
    kind = fields.String(metadata={"description": "builtin or uploaded"})
    available = fields.Boolean(metadata={"description": "whether a job can read it now"})
    description = fields.String()
    default = fields.Boolean()
    train_size = fields.Integer()
    test_size = fields.Integer()
    classes = fields.List(fields.String())
    digest = fields.String(allow_none=True, metadata={"description": "sha256 of the arrays (uploads)"})
    source = fields.String()
    stored_bytes = fields.Integer(metadata={"description": "compressed size in Redis (uploads)"})
    uploaded_at = fields.String()
    origin = fields.Nested(
        DatasetOriginSchema, metadata={"description": "how it was built, when not uploaded"}
    )
    how_to_get = fields.String(metadata={"description": "when a built-in is not available"})


class FromFeedbackSchema(Schema):
    class Meta:
        unknown = RAISE

    model = fields.String(
        required=True, validate=name_field, metadata={"description": "the model whose log is read"}
    )
    version = fields.Integer(
        load_default=None,
        allow_none=True,
        strict=True,
        validate=validate.Range(min=1),
        metadata={"description": "only this version's predictions (null: every version's)"},
    )
    merge = fields.String(
        load_default=None,
        allow_none=True,
        validate=name_field,
        metadata={
            "description": "a built-in or uploaded dataset whose images join (and whose test split is kept)"
        },
    )


class UploadQuerySchema(Schema):
    format = fields.String(
        validate=validate.OneOf(UPLOAD_KINDS),
        metadata={"description": "npz, csv or idx (a zip/tar of IDX files); else guessed"},
    )
