"""The package's import graph, read from the source with ``ast``: no cycles, imports only go down the layers.

Nothing is imported: every ``import`` and ``from ... import`` statement of every module under
``cdanet/`` counts, including those inside functions and under ``TYPE_CHECKING`` (a deferred or
type-only import is still a dependency). The layers follow the chain of docs/architecture.md: raw
files -> contract -> processed data -> model -> training -> evaluation -> gate -> registry, with the
entry points on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cdanet"

#: Lowest first. A unit is a top-level module or subpackage of ``cdanet`` (``layers`` covers
#: ``cdanet/layers/*``); a module may import from its own layer and the layers below it only.
LAYERS: list[tuple[str, set[str]]] = [
    ("utilities: no cdanet imports", {"__init__", "atomic", "native", "pages", "kfp_pods"}),
    ("the data contract", {"contract"}),
    ("typed config and the model's input unit", {"config", "params", "batch"}),
    ("raw data -> the contract", {"simulate", "preprocessing", "synthetic"}),
    ("processed data: tensors and validation", {"data", "validation"}),
    ("model blocks", {"layers"}),
    ("models", {"models"}),
    ("objectives and the model directory", {"losses", "artifacts"}),
    ("evaluation, reference predictors, figures", {"evaluation", "references", "figures"}),
    ("training and hyperparameter search", {"training", "tuning", "katib"}),
    ("gate, serving, registry, the MLflow run", {"gate", "serving", "registry", "champion", "tracking", "mlflow_store"}),
    ("entry points: pipeline steps, runs, studies, deploy, CLI, TrainJob launcher", {"steps", "orchestration", "studies", "deploy", "cli", "trainjob"}),
]
LAYER_OF = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = ["cdanet", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _unit(module: str) -> str:
    """The layer unit of a module: ``cdanet.layers.blocks`` -> ``layers``, ``cdanet`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(name: str) -> str:
    """The module an imported dotted name lives in (``cdanet.contract.SPLITS`` -> ``cdanet.contract``)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> set[str]:
    """Every cdanet module that ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..y import z
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # ``from cdanet import pages`` imports the module cdanet.pages, not a name of cdanet.
            names += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return {_resolve(n) for n in names if n == "cdanet" or n.startswith("cdanet.")} - {module}


GRAPH: dict[str, set[str]] = {m: _imports(m) for m in MODULES}


def _cycle() -> list[str] | None:
    """One import cycle as a closed path of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_graph_is_read() -> None:
    assert "cdanet.contract.schema" in MODULES and "cdanet.layers" in MODULES
    assert "cdanet.contract" in GRAPH["cdanet.data"]  # a plain ``from cdanet.contract import ...``
    assert "cdanet.pages" in GRAPH["cdanet.figures"]  # ``from cdanet import pages``
    assert "cdanet.figures" in GRAPH["cdanet.steps"]  # an import inside a function


def test_no_import_cycles() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_layer() -> None:
    assert sorted({_unit(m) for m in MODULES} - set(LAYER_OF)) == [], "add new modules to LAYERS"
    assert sorted(set(LAYER_OF) - {_unit(m) for m in MODULES}) == [], "LAYERS names a unit that no longer exists"


def test_imports_only_go_down_the_layers() -> None:
    upward = [
        f"{m} ({LAYERS[LAYER_OF[_unit(m)]][0]}) imports {n} ({LAYERS[LAYER_OF[_unit(n)]][0]})"
        for m, targets in sorted(GRAPH.items())
        for n in sorted(targets)
        if LAYER_OF[_unit(n)] > LAYER_OF[_unit(m)]
    ]
    assert upward == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_docstring_opens_with_one_sentence_stating_its_job(module: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[module].read_text()))
    assert doc, f"{module} has no docstring"
    first, *rest = doc.splitlines()
    assert first.strip() and first.rstrip().endswith((".", ":")), f"{module}: {first!r}"
    assert not rest or not rest[0].strip(), f"{module}: the first sentence runs on past one line"
