"""The layers of docs/architecture.md, checked from the code's own imports (read with ast, not run).

- services/: `serving` (no Flask) ← `web` (HTTP plumbing) ← `api` and `predictor` (blueprints, which
  never import each other) ← `app` (the factory that joins them).
- shared/: the pure core (the network, the training loop and what they use) imports only NumPy and
  the standard library; no module of shared/ imports services/, worker/ or client/.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The pure numerical core and the modules it may use.
PURE = ("shared/mlp.py", "shared/training.py", "shared/augment.py", "shared/drift.py")
#: What the pure core may import: NumPy, the standard library (but not logging), and itself.
PURE_ALLOWED = {"numpy", "shared.mlp", "shared.training", "shared.augment", "shared.spec"}


def imports(path: Path) -> set[str]:
    """Return every module name that `path` imports, at any level of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_imports(folder: str) -> dict[str, set[str]]:
    """Return the imports of every module under `folder`, by path relative to the repository."""
    return {str(p.relative_to(ROOT)): imports(p) for p in sorted((ROOT / folder).rglob("*.py"))}


def offending(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    """Return "file imports module" for each import under `folder` of a module in `forbidden`."""
    return [
        f"{path} imports {name}"
        for path, names in package_imports(folder).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("services/api", ("services.predictor", "services.app", "services.wsgi")),
        ("services/predictor", ("services.api", "services.app", "services.wsgi")),
        ("services/web", ("services.api", "services.predictor", "services.app", "services.wsgi")),
        (
            "services/serving",
            ("flask", "flask_smorest", "werkzeug", "services.web", "services.api", "services.predictor"),
        ),
        ("shared", ("services", "worker", "client", "flask", "flask_smorest")),
        ("worker", ("services", "client", "flask")),
    ],
)
def test_layers_import_only_downwards(folder: str, forbidden: tuple[str, ...]) -> None:
    assert offending(folder, forbidden) == []


@pytest.mark.parametrize("module", PURE)
def test_the_pure_core_imports_only_numpy_and_the_standard_library(module: str) -> None:
    names = {n for n in imports(ROOT / module) if n != "__future__"}
    stdlib = {n for n in names if n.split(".")[0] in sys.stdlib_module_names}
    assert not {n for n in stdlib if n.split(".")[0] == "logging"}, "no logging inside the pure core"
    others = {n for n in names - stdlib if not any(n == a or n.startswith(a + ".") for a in PURE_ALLOWED)}
    # `from shared import mlp` reads as "shared" and "shared.mlp": the package itself is allowed.
    assert others <= {"shared"}, f"{module} imports {sorted(others - {'shared'})}"
