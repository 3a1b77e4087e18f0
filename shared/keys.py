"""Every Redis key name of mnist-service, in one place.

All keys live under one prefix (default ``mnist:``, `MNIST_KEY_PREFIX`), so several deployments
or test runs share a Redis without touching each other. RQ's own keys (``rq:…``) are RQ's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Builds key names under `prefix` (which ends with ``:``)."""

    prefix: str = "mnist:"

    # --- model registry ---------------------------------------------------------------------
    def models(self) -> str:
        """Set of model names that have at least one version."""
        return f"{self.prefix}models"

    def version_counter(self, model: str) -> str:
        """Integer counter; `INCR` hands out the model's next version number."""
        return f"{self.prefix}model:{model}:next_version"

    def versions(self, model: str) -> str:
        """Sorted set of the model's complete versions, scored by version number."""
        return f"{self.prefix}model:{model}:versions"

    def latest(self, model: str) -> str:
        """String: the highest complete version number."""
        return f"{self.prefix}model:{model}:latest"

    def aliases(self, model: str) -> str:
        """Hash alias -> version number."""
        return f"{self.prefix}model:{model}:aliases"

    def splits(self, model: str) -> str:
        """Hash alias -> JSON {"4": 0.9, "5": 0.1} (weights sum to 1) of aliases naming several versions."""
        return f"{self.prefix}model:{model}:splits"

    def decisions(self, model: str) -> str:
        """Stream of rollout decisions (canary, promote, rollback, split), trimmed to about 1,000."""
        return f"{self.prefix}model:{model}:decisions"

    def rollout_rule(self, model: str) -> str:
        """String: the model's automatic rollout rule, JSON (shared/rollout_rule.py)."""
        return f"{self.prefix}model:{model}:rollout:rule"

    def rollout_lock(self) -> str:
        """String, expiring: held by the web process that evaluates the rollout rules this interval."""
        return f"{self.prefix}rollout:lock"

    def blob(self, model: str, version: int) -> str:
        """String: the version's .npz bytes."""
        return f"{self.prefix}model:{model}:v{version}:blob"

    def record(self, model: str, version: int) -> str:
        """String: the version's JSON record (sha256, size, metadata)."""
        return f"{self.prefix}model:{model}:v{version}:record"

    def events(self) -> str:
        """Pub/sub channel announcing published versions and alias moves."""
        return f"{self.prefix}events"

    # --- training -----------------------------------------------------------------------------
    def checkpoint(self, job_id: str) -> str:
        """String: the latest training checkpoint of a job (.npz bytes)."""
        return f"{self.prefix}job:{job_id}:checkpoint"

    def published(self, job_id: str) -> str:
        """String: the version a job published, set with the version so a retry never publishes twice."""
        return f"{self.prefix}job:{job_id}:published"

    def stop(self, job_id: str) -> str:
        """String flag: set when a running job is asked to stop between steps."""
        return f"{self.prefix}job:{job_id}:stop"

    def jobs(self) -> str:
        """Sorted set of job ids scored by submission time (for listing)."""
        return f"{self.prefix}jobs"

    def stopped_jobs(self) -> str:
        """Sorted set of jobs stopped on request while running, scored by when their record expires.

        RQ files such a job as finished (its function returned): `Jobs.counts()` counts it as
        canceled instead.
        """
        return f"{self.prefix}jobs:stopped"

    # --- datasets -----------------------------------------------------------------------------
    def datasets(self) -> str:
        """Hash name -> JSON info of uploaded datasets."""
        return f"{self.prefix}datasets"

    def dataset_blob(self, name: str) -> str:
        """String: an uploaded dataset as compressed .npz bytes."""
        return f"{self.prefix}dataset:{name}:blob"

    # --- what the service saw (the prediction log, feedback, shadows) ----------------------------
    def prediction_log(self, model: str) -> str:
        """Stream of the model's logged predictions (MAXLEN ~ MNIST_LOG_MAXLEN), one entry per image.

        Fields: ``id`` (request id; image i of a batch: ``<id>/<i>``), ``version``, ``label``
        (predicted; decimal), ``kind`` (``live`` or ``shadow``), ``probabilities`` (10 float32
        little-endian), ``pixels`` (784 uint8, row-major); the entry id (milliseconds) is the time.
        """
        return f"{self.prefix}model:{model}:predictions"

    def prediction_index(self, model: str, generation: int) -> str:
        """Hash request id -> "version label" of the live entries logged in one generation.

        Two generations of MNIST_LOG_MAXLEN / 2 entries are kept: feedback finds its prediction
        here, and an id older than both has expired.
        """
        return f"{self.prefix}model:{model}:predictions:index:{generation}"

    def logged_count(self, model: str) -> str:
        """Integer: live entries ever logged for the model (the index's generation is derived from it)."""
        return f"{self.prefix}model:{model}:predictions:count"

    def feedback_labels(self, model: str) -> str:
        """Hash request id -> true label (decimal); trimmed with the index, so bounded the same way."""
        return f"{self.prefix}model:{model}:feedback"

    def version_stats(self, model: str, version: int) -> str:
        """Hash of one version's counters.

        requests, feedback, correct, confusion:<true>:<predicted> (totals since it first served; the
        rolling window's are in `window_current` and `window_previous`), shadow_compared,
        shadow_agreed, and the live drift profile profile:<feature>:<bin>.
        """
        return f"{self.prefix}model:{model}:v{version}:stats"

    def window_current(self, model: str, version: int) -> str:
        """Hash of the version's newest feedback counters: feedback, correct, confusion:<true>:<predicted>.

        It counts up to MNIST_FEEDBACK_WINDOW / 2 labels, then becomes `window_previous` (whose
        counters it replaces) and a new one starts: the two hold the last W/2 to W labels.
        """
        return f"{self.prefix}model:{model}:v{version}:window:current"

    def window_previous(self, model: str, version: int) -> str:
        """Hash of the version's feedback counters of the W/2 labels before `window_current`'s."""
        return f"{self.prefix}model:{model}:v{version}:window:previous"

    def shadow(self, model: str) -> str:
        """Hash `version`, `sample` (0-1) of the model's shadow version, when one is set."""
        return f"{self.prefix}model:{model}:shadow"
