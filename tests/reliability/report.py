"""Write the figure tables of docs/reliability.md from the results of `make reliability`.

    python -m tests.reliability.report [bench/results/reliability.json] [docs/reliability.md]

The tables go between the markers ``<!-- figures:begin -->`` and ``<!-- figures:end -->``; the
rest of the page (what each scenario checks, how to read it) is written by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "reliability.json"
PAGE = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"

#: (scenario key, title, [(figure key, label)]), in the order of the page.
TABLES: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("worker_sigkill", "Fault (a): an RQ worker SIGKILLed mid-training", [
        ("progress_at_kill", "progress when killed (fraction, last report)"),
        ("iteration_last_reported", "iteration of the last progress report before the kill"),
        ("checkpoint_interval_s", "MNIST_CHECKPOINT_INTERVAL of the run (s)"),
        ("resumed_from_iteration", "resumed from iteration (the last checkpoint)"),
        ("iterations_redone", "iterations trained twice (at least)"),
        ("total_iterations", "iterations in the job"),
        ("requeued_after_s", "the other worker took the job after (s)"),
        ("training_again_after_s", "resume delay: training again after (s)"),
        ("job_seconds", "whole job, submission to end (s)"),
        ("versions_published", "versions published"),
    ]),
    ("redis_restart", "Fault (b): Redis killed -9 and restarted under traffic", [
        ("outage_s", "Redis down for (s)"),
        ("requests", "prediction requests in the run"),
        ("requests_during_outage", "of which sent while Redis was down"),
        ("failures", "failed predictions (un-pinned, model in memory)"),
        ("metadata_route_during_outage", "GET /v1/models/<m> while down (status)"),
        ("readyz_reconnected_after_s", "/readyz sees Redis again after (s)"),
        ("new_version_served_after_s", "a version published after the restart served after (s)"),
        ("job_after_restart_s", "a job submitted after the restart finished in (s)"),
        ("job_after_restart_worker", "it ran on worker"),
        ("job_training_during_outage", "the job that was training during the outage ended"),
        ("job_training_worker", "it trained on worker"),
        ("job_training_attempts", "its attempts"),
        ("workers_alive", "RQ workers alive afterwards (of 2)"),
        ("versions_survived", "versions published before the kill and found after (AOF)"),
    ]),
    ("gunicorn_worker_sigkill", "Fault (c): a gunicorn worker process SIGKILLed under load", [
        ("requests", "prediction requests in the run"),
        ("concurrency", "client threads"),
        ("failed_requests", "failed requests (in flight on the killed process)"),
        ("failed_after_the_kill", "failed requests sent after the kill"),
        ("new_worker_after_s", "gunicorn started a new worker after (s)"),
        ("jobs_accepted", "jobs accepted (202) around the kill"),
        ("jobs_refused_or_cut", "job submissions cut by the kill"),
        ("jobs_finished", "accepted jobs finished"),
    ]),
    ("corrupt_blob", "Fault (d): a corrupted blob in Redis", [
        ("refusal_reported_after_s", "/readyz names the refused version after (s)"),
        ("predictions_while_refused", "un-pinned predictions while refused"),
        ("failures", "of which failed"),
        ("versions_answering", "versions that answered"),
        ("pinned_corrupt_version_status", "a prediction pinned to the corrupt version (status)"),
        ("weights_download_status", "its weights download (status)"),
        ("corrupt_reloads_counted", "mnist_model_reloads_total{outcome=\"corrupt\"}"),
        ("next_good_version_served_after_s", "the next good version served after (s)"),
    ]),
    ("corrupt_blob_fresh_process",
     "Fault (d), limit: a gunicorn process started after the corruption (it never held v1)", [
        ("requests", "un-pinned predictions on fresh connections (2 processes)"),
        ("answered_by_v1", "answered by v1 (the process that held it)"),
        ("answered_503", "answered 503 (the new process: nothing to fall back on)"),
        ("other_statuses", "other statuses"),
    ]),
    ("hosts_primary_lost", "Separate hosts: the Redis primary's host lost under load and during a job", [
        ("promoted_after_s", "a replica promoted after (s)"),
        ("requests", "predictions through nginx in the run (4 clients)"),
        ("failures", "of which failed"),
        ("failures_from_s", "first failure, after the loss (s)"),
        ("failures_to_s", "last failure, after the loss (s)"),
        ("slowest_ms", "slowest prediction (ms)"), ("p99_ms", "p99 (ms)"),
        ("version_before_kept", "the version published just before the loss is kept"),
        ("publish_after_reached_both_predictors_s",
         "a publish after the failover served by both predictors after (s)"),
        ("job_status", "the job training during the loss"), ("job_attempts", "its attempts"),
        ("job_resumed_from_iteration", "resumed from iteration"),
        ("job_ended_after_s", "it ended, after the loss (s)"),
        ("versions", "versions in the registry (seed, before, after, the job's)"),
    ]),
    ("hosts_predictor_cut", "Separate hosts: one predictor's link cut under load (nginx over two)", [
        ("requests", "predictions through nginx in the run (4 clients)"),
        ("failures", "of which failed"),
        ("requests_after_cut", "sent after the cut"),
        ("slow_requests_after_cut", "of which slower than 1 s (in flight on, or sent to, the cut host)"),
        ("taken_out_after_s", "nginx took the host out after (s)"),
        ("slowest_after_cut_s", "slowest after the cut (s)"), ("p99_ms", "p99 of the run (ms)"),
    ]),
    ("hosts_worker_partitioned", "Separate hosts: a worker's host partitioned from Redis mid-job", [
        ("partitioned_s", "partitioned for (s)"),
        ("taken_over_after_s", "the other worker took the job after (s)"),
        ("job_status", "the job"), ("job_attempts", "its attempts"),
        ("resumed_from_iteration", "resumed from iteration"),
        ("finished_after_s", "finished, after the partition began (s)"),
        ("versions_of_the_job", "versions the job published (30 s after the partition healed)"),
    ]),
    ("load", "Load: 20,000 predictions at concurrency 16, 10 publishes", [
        ("requests", "requests"), ("failures", "failures"), ("concurrency", "concurrency"),
        ("publishes", "publishes during the run"), ("versions_answering", "versions that answered"),
        ("answers_from_unpublished_versions", "answers from a version not yet published"),
        ("p50_ms", "p50 latency (ms)"), ("p99_ms", "p99 latency (ms)"), ("max_ms", "max latency (ms)"),
        ("throughput_rps", "throughput (requests/s)"), ("seconds", "duration (s)"),
        ("first_answer_after_publish_max_ms",
         "slowest first answer from a new version, after publish() was called (ms)"),
    ]),
    ("load_short", "Load, short version (make test): 2,000 predictions, 3 publishes", [
        ("requests", "requests"), ("failures", "failures"), ("publishes", "publishes during the run"),
        ("answers_from_unpublished_versions", "answers from a version not yet published"),
        ("p50_ms", "p50 latency (ms)"), ("p99_ms", "p99 latency (ms)"),
        ("throughput_rps", "throughput (requests/s)"),
    ]),
    ("fuzz", "Hostile input: schemathesis cases from /openapi.json", [
        ("cases", "cases in all"), ("cases_random_names", "with generated names"),
        ("cases_existing_resources", "against a model, version, alias, dataset and job that exist"),
        ("operations", "operations"), ("statuses", "statuses answered"),
        ("server_errors", "5xx answers (check not_a_server_error)"), ("seed", "hypothesis seed"),
        ("seconds", "duration (s)"),
    ]),
    ("fuzz_smoke", "Hostile input, smoke pass (make test)", [
        ("cases", "cases"), ("operations", "operations"), ("server_errors", "5xx answers"),
    ]),
    ("pickle", "Hostile input: a pickled .npy whose unpickling would create a file", [
        ("attempts", "uploads (predict .npy, dataset .npz/.npy/raw pickle)"), ("refused", "refused with 400"),
        ("unpickled", "files created"),
    ]),
    ("idx_huge_header_4294967295x4294967295", "Hostile input: IDX header declaring 4,294,967,295 images", [
        ("upload_bytes", "upload (bytes)"), ("declared_mib", "declared pixels (MiB)"), ("status", "status"),
        ("peak_rss_growth_kib", "API worker peak RSS growth (KiB)"),
    ]),
    ("idx_huge_header_1000000x1000000",
     "Hostile input: IDX header declaring 1,000,000 images (the limit), 3 present", [
        ("upload_bytes", "upload (bytes)"), ("declared_mib", "declared pixels (MiB)"), ("status", "status"),
        ("peak_rss_growth_kib", "API worker peak RSS growth (KiB)"),
    ]),
    ("idx_inflating_upload",
     "Hostile input: a small gzipped IDX upload that inflates to 1,000,000 real images", [
        ("upload_bytes", "upload (bytes)"), ("inflated_mib", "inflated size (MiB)"), ("status", "status"),
        ("peak_rss_growth_mib", "API worker peak RSS growth (MiB)"), ("seconds", "request time (s)"),
    ]),
    ("idx_inflating_uploads_at_once",
     "Hostile input: three such uploads at once to one fresh API process (refused before they inflate)", [
        ("uploads", "uploads"), ("inflated_mib_each", "inflated size of each (MiB)"),
        ("statuses", "statuses"),
        ("peak_rss_growth_mib", "API worker peak RSS growth (MiB)"), ("seconds", "time for all (s)"),
    ]),
    ("tokens", "Security: tokens", [
        ("routes_checked", "guarded routes checked over HTTP (401 without, 403 wrong or the other token)"),
        ("unguarded", "routes that answered without the token they take"),
    ]),
    ("token_timing", "Security: timing of wrong tokens (sanity check)", [
        ("requests", "requests"), ("near_median_ms", "median, token wrong in its last character (ms)"),
        ("far_median_ms", "median, token wrong in its first character (ms)"),
        ("difference_us", "difference (µs)"),
    ]),
    ("redis_password", "Security: a Redis password in REDIS_URL", [
        ("job", "training job"), ("predict", "prediction (status)"),
        ("password_in_logs", "password in the logs"),
        ("seconds", "submit to prediction (s)"),
    ]),
    ("no_pickle", "Security: nothing loads pickle", [
        ("files_scanned", "Python files scanned"),
        ("rq_constructions", "RQ queues, workers and job look-ups"),
        ("findings", "findings"),
    ]),
    ("memory_bounds", "Security: hyperparameter bounds and the memory budget", [
        ("budget_mib", "MNIST_MAX_JOB_MEMORY_MB"),
        ("full_batch_4x2048_estimate_mib", "estimate of 4×2048, full batch, fashion-mnist (MiB): refused"),
        ("largest_accepted", "largest spec accepted on fashion-mnist"),
        ("largest_accepted_estimate_mib", "its estimate (MiB)"),
    ]),
    ("memory_worst_case", "Security: peak memory of the largest accepted job (real RQ work horse)", [
        ("spec", "spec (fashion-mnist)"), ("estimate_mib", "estimate (MiB)"), ("budget_mib", "budget (MiB)"),
        ("measured_peak_rss_mib", "measured peak RSS of the work horse (MiB)"),
        ("within_budget", "within the budget"),
        ("job_status", "job"), ("seconds", "duration (s)"),
    ]),
    ("memory_float32_augmented",
     "Security: peak memory of float32, batch 8192, affine augmentation (accepted)", [
        ("spec", "spec (fashion-mnist)"), ("estimate_mib", "estimate (MiB)"), ("budget_mib", "budget (MiB)"),
        ("measured_peak_rss_mib", "measured peak RSS of the work horse (MiB)"),
        ("within_budget", "within the budget"),
        ("job_status", "job"), ("seconds", "duration (s)"),
    ]),
    ("memory_json_one_image_60mb",
     "Hostile clients: a JSON prediction of one image of 15 M numbers (60 MB), no token", [
        ("body_bytes", "body (bytes)"), ("status", "status"),
        ("peak_rss_growth_mib", "worker peak RSS growth (MiB)"), ("seconds", "request time (s)"),
    ]),
    ("memory_json_one_image_60mb_x3", "Hostile clients: three such JSON predictions at once", [
        ("statuses", "statuses"), ("peak_rss_growth_mib", "worker peak RSS growth (MiB)"),
        ("seconds", "time for all (s)"),
    ]),
    ("memory_v2_data_30m", "Hostile clients: a V2 JSON `data` of 30 M values (60 MB), no token", [
        ("body_bytes", "body (bytes)"), ("status", "status"),
        ("peak_rss_growth_mib", "worker peak RSS growth (MiB)"), ("seconds", "request time (s)"),
    ]),
    ("memory_json_largest_within_count",
     "Hostile clients: one image of MNIST_MAX_BATCH × 784 numbers (the most the count lets through)"
     " beside a valid 10,000-image JSON body", [
        ("body_bytes", "body (bytes)"), ("status", "status"),
        ("peak_rss_growth_mib", "worker peak RSS growth (MiB)"), ("seconds", "request time (s)"),
        ("valid_body_bytes", "valid body (bytes)"), ("valid_status", "its status"),
        ("valid_peak_rss_growth_mib", "its worker peak RSS growth (MiB)"),
        ("valid_seconds", "its request time (s)"),
    ]),
    ("memory_evaluate_cache", "Hostile clients: :evaluate on uploaded datasets, one after another", [
        ("datasets", "datasets evaluated"), ("dataset_mib", "size of each (MiB)"),
        ("statuses", "statuses"), ("budget_mib", "MNIST_EVAL_CACHE_MB"),
        ("rss_kept_mib", "worker RSS kept afterwards (MiB)"),
        ("kept_before_mib", "kept before the budget: three datasets (MiB)"),
    ]),
    ("memory_upload_bomb_idx", "Hostile clients: an IDX zip upload of ~770 MB once inflated", [
        ("upload_bytes", "upload (bytes)"), ("inflated_mib", "inflated (MiB)"), ("status", "status"),
        ("peak_rss_growth_mib", "worker peak RSS growth (MiB)"), ("seconds", "request time (s)"),
    ]),
    ("memory_upload_bomb_npz", "Hostile clients: an int64 NPZ upload of ~770 MB once inflated", [
        ("upload_bytes", "upload (bytes)"), ("inflated_mib", "inflated (MiB)"), ("status", "status"),
        ("peak_rss_growth_mib", "worker peak RSS growth (MiB)"), ("seconds", "request time (s)"),
    ]),
    ("memory_upload_bomb_csv", "Hostile clients: a CSV.gz upload of ~770 MB once inflated", [
        ("upload_bytes", "upload (bytes)"), ("inflated_mib", "inflated (MiB)"), ("status", "status"),
        ("peak_rss_growth_mib", "worker peak RSS growth (MiB)"), ("seconds", "request time (s)"),
    ]),
    ("foreign_job", "Hostile Redis: an RQ job naming os.makedirs, written to the training queue", [
        ("job", "the job"), ("status", "RQ status"), ("api_view", "GET /v1/jobs/<id>"),
        ("error", "its error"), ("ended_after_s", "ended after (s)"),
        ("files_created", "files created"), ("log_lines", "worker log lines naming it"),
        ("worker_alive", "worker alive afterwards"), ("next_job", "the next training job"),
    ]),
    ("redis_stall", "Redis stall: paused 12 s (CLIENT PAUSE) while 24 clients read the registry", [
        ("server", "server"), ("predictions_during_pause", "in-memory predictions sent during the pause"),
        ("predictions_failed", "of which failed"), ("prediction_p50_ms", "their p50 (ms)"),
        ("prediction_p99_ms", "their p99 (ms)"), ("prediction_max_ms", "their max (ms)"),
        ("readyz_during_pause", "/readyz sent during the pause"), ("readyz_statuses", "their statuses"),
        ("readyz_max_ms", "their max (ms)"),
        ("registry_reads_during_pause", "registry reads sent during the pause"),
        ("registry_read_statuses", "their statuses"),
        ("registry_reads_ok_again_after_s", "registry reads answered again after the pause (s)"),
    ]),
    ("redis_emptied", "Redis emptied and restarted during training: v1 handed out again", [
        ("job_published_version", "version the job published"),
        ("emptied_to_publish_s", "Redis emptied to publish (s)"),
        ("answers", "predictions in the 8 s after (v1 pinned, and the default)"),
        ("pinned_v1_answers", "of which pinned to v1"),
        ("stale_answers", "answered with the old weights under v1"),
        ("last_stale_answer_after_s", "last stale answer after the publish (s)"),
        ("default_after", "the default afterwards"),
    ]),
    ("acl_roles", "Security: each role on the Redis user of docs/deploy.md", [
        ("users", "users"), ("upload", "dataset upload (status)"), ("job", "training job"),
        ("alias", "alias move (status)"), ("cancel", "cancel (status)"),
        ("predictor_default", "version the predictor serves"),
        ("predictor_ready", "predictor's /readyz sees Redis"),
        ("api_metrics", "API /metrics (status)"), ("commands_refused", "commands Redis refused"),
    ]),
    ("hostile_clients_gunicorn_alone",
     "Hostile clients, before: 500 slow connections straight at gunicorn (2 processes × 8 threads)", [
        ("slow_connections", "connections sending one header line or body byte every 2 s, no token"),
        ("threads", "gunicorn threads"),
        ("healthz_tries", "GET /healthz (timeout 10 s)"),
        ("healthz_timeouts", "of which timed out"),
    ]),
    ("hostile_clients_front",
     "Hostile clients, after: 500 slow connections and 200 event streams at `mnist up` (nginx in front)", [
        ("slow_connections", "connections sending one header line or body byte every 2 s, no token"),
        ("slow_connections_open_at_end", "of which open at the end"),
        ("slow_connections_closed_by_nginx_and_reopened",
         "closed by nginx (whole headers within 10 s) and opened again"),
        ("event_streams", "event streams of a queued job, no token"),
        ("event_stream_statuses", "their statuses (2 streams per process: MNIST_MAX_EVENT_STREAMS default)"),
        ("quiet_healthz_p99_ms", "before the attack: /healthz p99 (ms)"),
        ("quiet_predict_p99_ms", "before the attack: one-image prediction p99 (ms)"),
        ("measured_for_s", "measured under attack for (s)"),
        ("healthz_requests", "/healthz requests"), ("healthz_p50_ms", "/healthz p50 (ms)"),
        ("healthz_p99_ms", "/healthz p99 (ms)"), ("healthz_max_ms", "/healthz max (ms)"),
        ("predict_requests", "one-image predictions"), ("predict_p50_ms", "prediction p50 (ms)"),
        ("predict_p99_ms", "prediction p99 (ms)"), ("predict_max_ms", "prediction max (ms)"),
        ("failures", "failed requests"),
    ]),
    ("up_worker_sigkill", "Supervision: a worker SIGKILLed while training under `mnist up --workers 2`", [
        ("progress_at_kill", "progress when killed (fraction)"),
        ("worker_restarted_after_s", "the supervisor restarted it after (s)"),
        ("resumed_from_iteration", "the job resumed from iteration (its last checkpoint)"),
        ("total_iterations", "iterations in the job"),
        ("attempts", "attempts"),
        ("finished_after_kill_s", "the job finished after the kill (s)"),
        ("job_seconds", "whole job (s)"),
        ("versions_published", "versions published"),
        ("api_requests", "API requests meanwhile (/healthz and the job, through nginx)"),
        ("api_failures", "of which failed"),
        ("processes_kept_running", "the other programs kept running (same pids)"),
    ]),
    ("scoped_reads", "Security: scoped reads (every route in tests/routes.py, over HTTP)", [
        ("routes", "routes"), ("open_routes", "open (health, readiness, metrics, docs, page)"),
        ("read_routes", "reads (predict or write token once MNIST_PREDICT_TOKEN is set)"),
        ("predict_routes", "predictions (predict token)"),
        ("evaluate_routes", "evaluation (either token, always)"),
        ("write_routes", "writes (write token)"),
        ("reads_answered_without_token", "reads answered without a token, MNIST_PREDICT_TOKEN set"),
        ("weights_without_token", "weights download without a token (status)"),
        ("version_detail_without_token", "version detail without a token (status)"),
        ("v2_ready_without_token", "V2 model ready without a token (status)"),
        ("v2_metadata_without_token", "V2 model metadata without a token (status)"),
        ("write_token_on_predict_routes", "the write token on a predict route (status)"),
        ("reads_open_without_predict_token", "reads and predictions open without MNIST_PREDICT_TOKEN"),
        ("evaluate_without_token", "an evaluation without a token, no MNIST_PREDICT_TOKEN (status)"),
    ]),
    ("public_paths", "Security: no server path in public reads", [
        ("reads_checked", "public reads checked (datasets, models, versions, jobs)"),
        ("server_paths_looked_for", "server paths looked for (repository, venv, home, dataset folders)"),
        ("paths_found", "paths found"),
        ("version_source", "a new version's dataset source"),
        ("older_version_source_shown", "a version recorded with a path, as shown"),
    ]),
]  # fmt: skip


#: Figures that are identifiers, not quantities: written without thousands separators.
PLAIN = {"seed"}


def _cell(value: Any, field: str = "") -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and field not in PLAIN:
        return f"{value:,}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    text = str(value)
    return f"`{text}`" if text.startswith("{") else text


def tables(results: dict[str, Any]) -> str:
    """Return the Markdown of every table whose scenario has figures in `results`."""
    scenarios = results.get("scenarios", {})
    machine = results.get("machine", {})
    lines = [
        f"Figures of the last `make reliability` run ({results.get('updated_at', '?')}; "
        f"{machine.get('cpus', '?')} CPUs, Python {machine.get('python', '?')}). "
        "Generated by `tests/reliability/report.py` from `bench/results/reliability.json`.",
        "",
    ]
    for key, title, rows in TABLES:
        figures = scenarios.get(key)
        if not figures:
            continue
        lines += [f"#### {title}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {label} | {_cell(figures[f], f)} |" for f, label in rows if f in figures]
        lines += ["", f"_Scenario `{key}`, measured {figures.get('recorded_at', '?')}._", ""]
    outcomes = results.get("outcomes", {})
    if outcomes:
        failed = sorted(k for k, v in outcomes.items() if v == "failed")
        skipped = sorted(k for k, v in outcomes.items() if v == "skipped")
        passed = sum(v == "passed" for v in outcomes.values())
        lines += [
            "#### Outcome",
            "",
            f"{passed} tests passed, {len(failed)} failed, {len(skipped)} skipped.",
            "",
        ]
        lines += [f"- failed: `{k}`" for k in failed] + [f"- skipped: `{k}`" for k in skipped]
        lines += [""] if failed or skipped else []
    missing = [key for key, _, _ in TABLES if key not in scenarios]
    if missing:
        lines += [f"Not measured in this run: {', '.join(missing)}.", ""]
    return "\n".join(lines).rstrip() + "\n"


def write(results_path: Path = RESULTS, page: Path = PAGE) -> None:
    """Replace the figures between the markers of `page` with tables of `results_path`."""
    results = json.loads(results_path.read_text())
    text = page.read_text()
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise SystemExit(f"{page}: the markers {BEGIN} and {END} are missing")
    page.write_text(f"{head}{BEGIN}\n{tables(results)}{END}{tail}")


def main(argv: list[str]) -> None:
    results = Path(argv[0]) if argv else RESULTS
    page = Path(argv[1]) if len(argv) > 1 else PAGE
    write(results, page)
    print(f"wrote the figures of {results} into {page}")


if __name__ == "__main__":
    main(sys.argv[1:])
