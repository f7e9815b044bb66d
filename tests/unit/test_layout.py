"""The architecture rules of the README's Layout section, checked on the source by parsing imports.

Each rule is a function from the parsed project to a list of violations, so that the tests below
can also feed it a planted violation and see it reported: a rule that can never fail checks nothing.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "models", "trainer")
FRAMEWORKS = ("faust", "mode", "aiokafka", "confluent_kafka")
# faust's and aiokafka's private interfaces change between releases; keeping every use in one
# module makes an upgrade one file to review (and pyproject caps faust-streaming for the same reason).
FAUST_HOOKS = "streams.worker.faust_hooks"
PRIVATE_FRAMEWORKS = ("faust", "mode", "aiokafka")


@dataclasses.dataclass(frozen=True)
class Import:
    target: str  # the absolute dotted name, resolved to a project module where it is one
    line: int
    deferred: bool  # inside a function: runs when called, not when the module is imported
    type_only: bool  # under ``if TYPE_CHECKING:``: never runs


@dataclasses.dataclass
class Module:
    name: str
    path: str
    tree: ast.Module
    is_package: bool
    imports: list[Import] = dataclasses.field(default_factory=list)


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _raw_imports(module: Module) -> list[tuple[str, list[str], int, bool, bool]]:
    """(module imported, names taken from it, line, deferred, type_only) for every import statement."""
    found: list[tuple[str, list[str], int, bool, bool]] = []

    def visit(node: ast.AST, deferred: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno, deferred, type_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.name if module.is_package else module.name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            found.append((base, [a.name for a in node.names], node.lineno, deferred, type_only))
        for child in ast.iter_child_nodes(node):
            in_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            guarded = isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body
            visit(child, deferred or in_function, type_only or guarded)

    visit(module.tree, False, False)
    return found


def parse_project(sources: dict[str, str] | None = None, root: Path = REPO) -> dict[str, Module]:
    """The project's modules by dotted name; ``sources`` ({relative path: text}) replaces or adds files."""
    files = {
        str(p.relative_to(root)): p.read_text() for package in PACKAGES for p in sorted((root / package).rglob("*.py"))
    }
    files.update(sources or {})
    modules = {}
    for rel, text in files.items():
        name, is_package = _module_name(root / rel, root)
        modules[name] = Module(name, rel, ast.parse(text, rel), is_package)
    for module in modules.values():
        for base, names, line, deferred, type_only in _raw_imports(module):
            # ``from package import submodule`` imports the submodule; otherwise the name is an attribute.
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules] or [base]
            module.imports.extend(Import(t, line, deferred, type_only) for t in targets)
    return modules


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def core_is_pure(modules: dict[str, Module]) -> list[str]:
    """streams.core imports no framework and nothing of the layers built on it."""
    banned = (*FRAMEWORKS, "streams.worker", "streams.kafka", "streams.devtools", "streams.cli")
    return [
        f"{m.path}:{i.line} imports {i.target}"
        for m in modules.values()
        if _under(m.name, "streams.core")
        for i in m.imports
        if _under(i.target, *banned)
    ]


def nothing_imports_devtools_or_cli(modules: dict[str, Module]) -> list[str]:
    """Only the composition root and the dev tools themselves may depend on the dev tools or the CLI."""
    layers = ("streams.worker", "streams.kafka", "streams.core", "models", "trainer")
    return [
        f"{m.path}:{i.line} imports {i.target}"
        for m in modules.values()
        if _under(m.name, *layers)
        for i in m.imports
        if _under(i.target, "streams.devtools", "streams.cli")
    ]


def trainer_uses_only_settings_core_kafka(modules: dict[str, Module]) -> list[str]:
    """The trainer reads Kafka and shares records and settings with the worker, nothing else."""
    return [
        f"{m.path}:{i.line} imports {i.target}"
        for m in modules.values()
        if _under(m.name, "trainer")
        for i in m.imports
        if _under(i.target, "streams") and not _under(i.target, "streams.settings", "streams.core", "streams.kafka")
    ]


def models_stand_alone(modules: dict[str, Module]) -> list[str]:
    """Importing models loads neither the streaming side nor the trainer."""
    return [
        f"{m.path}:{i.line} imports {i.target}"
        for m in modules.values()
        if _under(m.name, "models")
        for i in m.imports
        if not i.deferred and not i.type_only and _under(i.target, "streams", "trainer")
    ]


def _import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    """Edges of what importing a module runs at once: its module-level imports of project modules,
    including the packages above each (their ``__init__`` runs first)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for m in modules.values():
        for i in m.imports:
            if i.deferred or i.type_only:
                continue
            parts = i.target.split(".")
            for n in range(1, len(parts) + 1):
                target = ".".join(parts[:n])
                # A module importing its own package is no cycle: the package is initialised already.
                if target in modules and target != m.name and not _under(m.name, target):
                    graph[m.name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as [a, b, ..., a], or [] when it has none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def dfs(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return []


def no_import_cycles(modules: dict[str, Module]) -> list[str]:
    """Module-level imports form no cycle, so any module can be imported first."""
    cycle = find_cycle(_import_graph(modules))
    return [" -> ".join(cycle)] if cycle else []


PRIVATE = re.compile(r"_[a-z]\w*")


def _private_uses(module: Module) -> list[str]:
    """Attributes named ``_x`` (not dunder) read off anything but ``self``/``cls``, and private names
    imported from faust, mode or aiokafka."""
    uses = []
    for node in ast.walk(module.tree):
        if (
            isinstance(node, ast.Attribute)
            and PRIVATE.fullmatch(node.attr)
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            uses.append(f"{module.path}:{node.lineno} .{node.attr}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [f"{node.module}.{a.name}" for a in node.names if not node.level]
            )
            uses.extend(
                f"{module.path}:{node.lineno} import {n}"
                for n in names
                if _under(n, *PRIVATE_FRAMEWORKS) and any(p.startswith("_") for p in n.split("."))
            )
    return uses


def private_hooks_in_one_module(modules: dict[str, Module]) -> list[str]:
    """Every reach into another object's private attributes under streams/ is in faust_hooks."""
    return [
        use for m in modules.values() if _under(m.name, "streams") and m.name != FAUST_HOOKS for use in _private_uses(m)
    ]


RULES = [
    core_is_pure,
    nothing_imports_devtools_or_cli,
    trainer_uses_only_settings_core_kafka,
    models_stand_alone,
    no_import_cycles,
    private_hooks_in_one_module,
]


@pytest.fixture(scope="module")
def project() -> dict[str, Module]:
    return parse_project()


def test_project_parsed(project: dict[str, Module]) -> None:
    # Guards the rules against passing vacuously on an empty or mis-rooted tree.
    assert {"streams.core.processing", "streams.worker.faust_hooks", "models.dnn", "trainer.event_log"} <= set(project)
    assert any(i.target == "streams.settings" for i in project["trainer.event_log"].imports)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_layout_rule(rule, project: dict[str, Module]) -> None:  # type: ignore[no-untyped-def]
    assert rule(project) == [], rule.__doc__


# One planted violation per rule: (rule, {file: source}); each must be reported.
PLANTED = [
    (core_is_pure, {"streams/core/planted.py": "import faust\n"}),
    (core_is_pure, {"streams/core/planted.py": "def f():\n    from confluent_kafka import Consumer\n"}),
    (core_is_pure, {"streams/core/planted.py": "from streams.kafka import clients\n"}),
    (core_is_pure, {"streams/core/planted.py": "from ..worker import batching\n"}),
    (nothing_imports_devtools_or_cli, {"streams/kafka/planted.py": "def f():\n    import streams.cli\n"}),
    (nothing_imports_devtools_or_cli, {"models/planted.py": "from streams.devtools import synthetic\n"}),
    (trainer_uses_only_settings_core_kafka, {"trainer/planted.py": "from streams.worker.batching import X\n"}),
    (trainer_uses_only_settings_core_kafka, {"trainer/planted.py": "import streams.ports\n"}),
    (models_stand_alone, {"models/planted.py": "from trainer.train import train_to_artifact\n"}),
    (models_stand_alone, {"models/planted.py": "from streams.core import records\n"}),
    (
        no_import_cycles,
        {
            "streams/core/cyc_a.py": "from streams.core import cyc_b\n",
            "streams/core/cyc_b.py": "import streams.core.cyc_a\n",
        },
    ),
    (private_hooks_in_one_module, {"streams/worker/planted.py": "def f(app):\n    return app._consumer\n"}),
    (private_hooks_in_one_module, {"streams/kafka/planted.py": "from aiokafka.consumer import _fetcher\n"}),
]


@pytest.mark.parametrize("rule, sources", PLANTED, ids=lambda v: v.__name__ if callable(v) else "")
def test_layout_rule_reports_a_planted_violation(rule, sources: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    assert rule(parse_project(sources)) != []


@pytest.mark.parametrize(
    "sources",
    [
        # Deferred and type-only imports run after (or never at) import time: no cycle, and models may
        # reach the streaming side inside a function.
        {
            "streams/core/cyc_a.py": "from streams.core import cyc_b\n",
            "streams/core/cyc_b.py": "def f():\n    import streams.core.cyc_a\n",
        },
        {
            "streams/core/cyc_a.py": "from typing import TYPE_CHECKING\nfrom streams.core import cyc_b\n",
            "streams/core/cyc_b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import streams.core.cyc_a\n"
            ),
        },
        {"models/planted.py": "def f():\n    from streams.core import records\n"},
        {"streams/worker/planted.py": "class A:\n    def f(self):\n        return self._x, cls._y, self.__dict__\n"},
    ],
)
def test_layout_rules_accept_what_they_allow(sources: dict[str, str]) -> None:
    project = parse_project(sources)
    assert [v for rule in RULES for v in rule(project)] == []


def test_core_imports_without_frameworks() -> None:
    # The rules above see the source; this sees what importing it actually loads, transitively.
    code = f"import sys, streams.core.processing\nprint(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
