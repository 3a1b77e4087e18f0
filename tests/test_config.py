"""Settings: every variable read through `Settings.from_env`, nowhere else, and documented in
docs/deploy.md by a table generated from the fields (`python -m shared.config`)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from shared.config import TABLE_BEGIN, TABLE_END, Settings, render_table, update_document

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
#: The command that regenerates the documented table; the failing test names it.
FIX = "`.venv/bin/python -m shared.config --write docs/deploy.md`"
#: Packages of the server side: they read their settings through `Settings` only.
SERVER_PACKAGES = ("shared", "services", "worker")
#: Variables of the service: reading one outside shared/config.py bypasses `Settings`.
SERVICE_VARIABLE = re.compile(r"MNIST_\w+|REDIS_URL|WEB_CONCURRENCY")


# --- Reading the environment -----------------------------------------------------------------------


def test_every_field_has_its_own_variable_and_a_description() -> None:
    names = [f.metadata["env"] for f in fields(Settings)]
    assert len(names) == len(set(names))
    assert all(SERVICE_VARIABLE.fullmatch(name) for name in names)
    assert all(f.metadata["doc"] for f in fields(Settings))


def test_unset_and_empty_variables_keep_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    empty = {f.metadata["env"]: "" for f in fields(Settings)}
    assert Settings.from_env(empty) == Settings()
    defaults = Settings()
    assert (defaults.access_log, defaults.worker_name, defaults.sample_path) == (None, None, None)
    assert (defaults.web_workers, defaults.web_threads, defaults.request_timeout) == (2, 8, 120)
    assert (defaults.bind, defaults.log_level) == ("0.0.0.0:8000", "INFO")
    assert defaults.data_dir == Path("~/.cache/mnist-service/mnist")
    assert defaults.fashion_dir == Path("/usr/share/datasets/fashion-mnist")
    assert defaults.mirror == "https://storage.googleapis.com/cvdf-datasets/mnist/"


def test_from_env_reads_each_variable_as_its_field_type() -> None:
    settings = Settings.from_env(
        {
            "WEB_CONCURRENCY": "4",
            "MNIST_THREADS": "3",
            "MNIST_REQUEST_TIMEOUT": "30",
            "MNIST_BIND": "127.0.0.1:9000",
            "MNIST_ACCESS_LOG": "-",
            "MNIST_LOG_LEVEL": "debug",
            "MNIST_WORKER_NAME": "gpu-box-1",
            "MNIST_SAMPLE_PATH": "~/digits.csv.gz",
            "MNIST_FASHION_DIR": "/srv/fashion",
            "MNIST_DATA_DIR": "/srv/mnist",
            "MNIST_MIRROR": "http://mirror.internal/mnist",
            "MNIST_POLL_INTERVAL": "0.25",
        }
    )
    assert (settings.web_workers, settings.web_threads, settings.request_timeout) == (4, 3, 30)
    assert (settings.bind, settings.access_log, settings.log_level) == ("127.0.0.1:9000", "-", "debug")
    assert settings.worker_name == "gpu-box-1"
    assert settings.sample_path == Path("~/digits.csv.gz")
    assert (settings.fashion_dir, settings.data_dir) == (Path("/srv/fashion"), Path("/srv/mnist"))
    assert settings.mirror == "http://mirror.internal/mnist"
    assert settings.poll_interval == 0.25


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("MNIST_THREADS", "many", "MNIST_THREADS='many': expected int"),
        ("WEB_CONCURRENCY", "2.5", "WEB_CONCURRENCY='2.5': expected int"),
        ("MNIST_POLL_INTERVAL", "soon", "MNIST_POLL_INTERVAL='soon': expected float"),
    ],
)
def test_a_bad_value_names_its_variable_and_its_type(variable: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings.from_env({variable: value})


def test_variable_names_the_environment_variable_of_a_field() -> None:
    assert Settings.variable("data_dir") == "MNIST_DATA_DIR"
    assert Settings.variable("web_workers") == "WEB_CONCURRENCY"
    with pytest.raises(KeyError):
        Settings.variable("no_such_setting")


def test_a_worker_freezes_what_it_built_at_start_up() -> None:
    probe = (
        "import gc, runpy\n"
        "conf = runpy.run_path('services/gunicorn_conf.py')\n"
        "before = gc.get_freeze_count()\n"
        "conf['post_worker_init'](None)\n"
        "print(before, gc.get_freeze_count())\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": "/nonexistent/not-created-on-load"}
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert before == 0 and after > 1000  # the interpreter's and the config's objects, at least


def test_gunicorn_conf_takes_its_settings_from_settings_before_numpy_or_prometheus_load() -> None:
    probe = (
        "import json, runpy, sys\n"
        "conf = runpy.run_path('services/gunicorn_conf.py')\n"
        "names = ('bind', 'workers', 'threads', 'timeout', 'accesslog', 'loglevel')\n"
        "loaded = [m for m in ('numpy', 'prometheus_client', 'flask') if m in sys.modules]\n"
        "print(json.dumps({'conf': {n: conf[n] for n in names}, 'loaded': loaded}))\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "PROMETHEUS_MULTIPROC_DIR": "/nonexistent/not-created-on-load",
        "MNIST_BIND": "127.0.0.1:9001",
        "WEB_CONCURRENCY": "3",
        "MNIST_THREADS": "5",
        "MNIST_REQUEST_TIMEOUT": "45",
        "MNIST_ACCESS_LOG": "-",
        "MNIST_LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["conf"] == {
        "bind": "127.0.0.1:9001",
        "workers": 3,
        "threads": 5,
        "timeout": 45,
        "accesslog": "-",
        "loglevel": "warning",
    }
    assert result["loaded"] == []


# --- Nobody else reads them ------------------------------------------------------------------------


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def environment_reads(source: str) -> Iterator[tuple[int, str]]:
    """Yield (line, variable) of each access to os.environ or os.getenv with a name known statically."""
    tree = ast.parse(source)
    constants = {
        target.id: node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }

    def name(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return None

    for node in ast.walk(tree):
        key: ast.expr | None = None
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("get", "setdefault", "pop"):
                key = node.args[0] if _is_environ(func.value) else None
            elif (isinstance(func, ast.Attribute) and func.attr == "getenv") or (
                isinstance(func, ast.Name) and func.id == "getenv"
            ):
                key = node.args[0]
        elif isinstance(node, ast.Subscript) and _is_environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.In | ast.NotIn):
            key = node.left if _is_environ(node.comparators[0]) else None
        if key is not None and (variable := name(key)) is not None:
            yield node.lineno, variable


def test_environment_reads_finds_every_way_of_reading_a_variable() -> None:
    source = (
        "import os\n"
        "from os import environ, getenv\n"
        "DATA = 'MNIST_DATA_DIR'\n"
        "a = os.environ.get('MNIST_THREADS', '8')\n"
        "b = os.environ['REDIS_URL']\n"
        "c = os.getenv('WEB_CONCURRENCY')\n"
        "d = environ.get(DATA)\n"
        "e = 'MNIST_BIND' in os.environ\n"
        "f = getenv('MNIST_MIRROR')\n"
        "os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')\n"
        "g = request.environ.get('HTTP_ACCEPT')\n"
    )
    assert list(environment_reads(source)) == [
        (4, "MNIST_THREADS"),
        (5, "REDIS_URL"),
        (6, "WEB_CONCURRENCY"),
        (7, "MNIST_DATA_DIR"),
        (8, "MNIST_BIND"),
        (9, "MNIST_MIRROR"),
        (10, "OPENBLAS_NUM_THREADS"),
        (11, "HTTP_ACCEPT"),
    ]


def test_only_shared_config_reads_the_service_variables() -> None:
    config = ROOT / "shared" / "config.py"
    stray = [
        f"{path.relative_to(ROOT)}:{line}: {variable}"
        for package in SERVER_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != config
        for line, variable in environment_reads(path.read_text())
        if SERVICE_VARIABLE.fullmatch(variable)
    ]
    assert stray == [], "read these through shared.config.Settings.from_env():\n" + "\n".join(stray)


# --- The documented table ---------------------------------------------------------------------------


def documented_defaults(markdown: str) -> dict[str, str]:
    """Return {variable: default cell} of each table row that starts with a `VARIABLE` cell."""
    rows = {}
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and re.fullmatch(r"`[A-Z0-9_]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_render_table_lists_every_setting_with_its_default() -> None:
    table = render_table()
    defaults = documented_defaults(table)
    assert list(defaults) == [f.metadata["env"] for f in fields(Settings)]
    assert defaults["MNIST_THREADS"] == "`8`"
    assert defaults["MNIST_CHECKPOINT_INTERVAL"] == "`5`"  # floats as written, not 5.0
    assert defaults["MNIST_DATA_DIR"] == "`~/.cache/mnist-service/mnist`"
    assert defaults["MNIST_WORKER_NAME"] == defaults["MNIST_API_TOKEN"] == "unset"
    assert table.startswith("| Variable | Default | Meaning |\n|---|---|---|\n")


def test_docs_deploy_md_holds_the_table_rendered_from_settings() -> None:
    text = DEPLOY_DOC.read_text()
    assert text.count(TABLE_BEGIN) == 1 and text.count(TABLE_END) == 1
    documented = text.partition(TABLE_BEGIN)[2].partition(TABLE_END)[0].strip("\n")
    assert documented == render_table().strip("\n"), (
        f"docs/deploy.md's settings table differs from shared.config.Settings: run {FIX}"
    )


def test_other_documented_defaults_agree_with_settings() -> None:
    rendered = documented_defaults(render_table())
    wrong = [
        f"{doc.relative_to(ROOT)}: {variable} {default} (Settings: {rendered[variable]})"
        for doc in sorted((ROOT / "docs").glob("*.md"))
        for variable, default in documented_defaults(doc.read_text()).items()
        if variable in rendered and default.startswith("`") and default != rendered[variable]
    ]
    assert wrong == []


def shared_config(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m shared.config ARGS` in the repository; return what it did."""
    command = [sys.executable, "-m", "shared.config", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_python_m_shared_config_prints_the_table_and_writes_it_into_a_document(tmp_path: Path) -> None:
    printed = shared_config()
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == render_table()

    doc = tmp_path / "deploy.md"
    doc.write_text(f"# Title\n\nBefore.\n\n{TABLE_BEGIN}\n| stale |\n{TABLE_END}\n\nAfter.\n")
    wrote = shared_config("--write", str(doc))
    assert wrote.returncode == 0, wrote.stderr
    assert doc.read_text() == f"# Title\n\nBefore.\n\n{TABLE_BEGIN}\n{render_table()}{TABLE_END}\n\nAfter.\n"
    assert update_document(doc.read_text()) == doc.read_text()  # regenerating again changes nothing

    plain = tmp_path / "plain.md"
    plain.write_text("# No table here\n")
    refused = shared_config("--write", str(plain))
    assert refused.returncode == 1
    assert f"no {TABLE_BEGIN}" in refused.stderr and "Traceback" not in refused.stderr
    assert plain.read_text() == "# No table here\n"
