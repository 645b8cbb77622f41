"""The package's import graph: no cycle, and integrations depend on the core, never the reverse;
and its seams: only the runtime writes a session's fields, no module writes another object's
private attributes, nothing reaches into the façade but through its documented seams.

Read from the source (``ast``), so function-local imports count as much as
module-level ones. Imports under ``if TYPE_CHECKING:`` are left out: they
never run, and annotations naming an integration's type create no
dependency. See docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import livekit_lifecycle

PACKAGE = "livekit_lifecycle"
ROOT = Path(livekit_lifecycle.__file__).parent

INTEGRATIONS = (
    "agents",
    "inspector",
    "render",
    "metrics",
    "tracing",
    "compat",
    "cli",
    "testing",
    "_watch",
    "_conversation",
)
"""Top-level modules and packages built on the core (a package covers its submodules);
every ``_demo*`` module is one too."""


def _is_integration(top: str) -> bool:
    return top in INTEGRATIONS or top.startswith("_demo")


STORES = "stores"
"""The store protocol and stores: the core writes through them, so they sit below it."""

LEAVES = ("log", "_numbers", "_version")
"""Modules with no package import of their own, which anything may use."""

ENTRY_POINTS = (PACKAGE, f"{PACKAGE}.__main__")
"""The public namespace and ``python -m``: they import everything, nothing imports them back."""


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                skipped.update(id(inner) for inner in ast.walk(statement))
    return skipped


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import x` imports the submodule x when there is one, else a name of `.`.
            submodules = [f"{module}.{alias.name}" for alias in node.names]
            targets = [m for m in submodules if m in modules] or [module]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    graph = _graph()
    # A reading that found nothing would pass every test below.
    assert f"{PACKAGE}._runtime" in graph[f"{PACKAGE}.manager"]
    assert f"{PACKAGE}._runtime" in graph[f"{PACKAGE}._intake"]
    assert f"{PACKAGE}.manager" in graph[f"{PACKAGE}.agents"]
    assert f"{PACKAGE}.metrics" in graph[PACKAGE] or graph[PACKAGE]


def test_no_import_cycle() -> None:
    assert _cycles(_graph()) == []


def test_the_core_never_imports_an_integration() -> None:
    graph = _graph()
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module not in ENTRY_POINTS and not _is_integration(_top(module))
        for target in targets
        if _is_integration(_top(target))
    )
    assert wrong == []


def test_stores_sit_below_the_core() -> None:
    graph = _graph()
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _top(module) == STORES
        for target in targets
        if _top(target) not in (STORES, *LEAVES)
    )
    assert wrong == []


def test_nothing_imports_the_entry_points() -> None:
    graph = _graph()
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if target in ENTRY_POINTS and module not in ENTRY_POINTS
    )
    assert wrong == []


def test_no_part_of_the_manager_subclasses_another() -> None:
    """Composition, not layers of one class: no class of the package derives from the
    manager or one of its parts (docs/architecture.md)."""
    parts = {
        "LifecycleManager",
        "SessionRuntime",
        "RoomIntake",
        "CleanupActivity",
        "Notifier",
        "Persistence",
        "ManagerLog",
        "Supervisor",
    }
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base).rsplit(".", 1)[-1] for base in node.bases}
                if bases & parts:
                    found.append(f"{name}.{node.name}({', '.join(sorted(bases & parts))})")
    assert found == []


# ---------------------------------------------------------------------- seams (issue 23, point 3)

RUNTIME = ("_runtime", "_actions", "_bookkeeping", "_machine")
"""The session runtime: the only modules that write a session's fields (``_actions`` holds
the chart's guards and effects, ``_bookkeeping`` makes the runtime's private record,
``_machine`` sets the state the chart's edge leads to)."""

OTHERS_PRIVATE_WRITES = {
    f"{PACKAGE}.stores._data": "SessionData.observed sets up the mapping its class just made",
    f"{PACKAGE}.testing._driver": "RoomDriver drives a real rtc.Room through its internals",
}
"""Modules allowed to write a private attribute of an object other than ``self``, and why."""

FACADE_SEAMS = ("_add_observer", "_set_shutdown_limit", "_conversation_store")
"""The façade's private members an integration may use (docs/architecture.md, "Seams")."""


_SETTERS = ("setattr", "delattr", "object.__setattr__", "object.__delattr__")


def _attribute_writes(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, object, attribute) of every attribute assigned, augmented or deleted, and of
    every ``setattr``/``object.__setattr__``/``delattr`` with a literal attribute name."""
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in _SETTERS
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
        ):
            found.append((node.lineno, ast.unparse(node.args[0]), str(node.args[1].value)))
        while targets:
            target = targets.pop()
            if isinstance(target, (ast.Tuple, ast.List)):
                targets.extend(target.elts)
            elif isinstance(target, ast.Starred):
                targets.append(target.value)
            elif isinstance(target, ast.Attribute):
                found.append((getattr(node, "lineno", 0), ast.unparse(target.value), target.attr))
    return found


def _private(attribute: str) -> bool:
    return attribute.startswith("_") and not attribute.startswith("__")


def test_only_the_runtime_writes_a_sessions_fields() -> None:
    """Nothing outside the runtime assigns a field of a ``Session`` (other than the class
    itself, through ``self``): the store's side, the cleanup activity, the integrations go
    through runtime methods (``set_cleanup_claim``, ``restore``, ``merge_stored``...)."""
    from livekit_lifecycle import Session

    fields = set(Session.__slots__)
    runtime = {f"{PACKAGE}.{name}" for name in RUNTIME}
    wrong = sorted(
        f"{name}:{line} {obj}.{attribute}"
        for name, path in _modules().items()
        if name not in runtime
        for line, obj, attribute in _attribute_writes(ast.parse(path.read_text()))
        if attribute in fields and obj not in ("self", "cls")
    )
    assert wrong == []


def test_no_module_writes_another_objects_private_attributes() -> None:
    """Private attributes are written by their own object (``self._x = ...``); the runtime
    writing a session's fields and the listed exceptions aside."""
    runtime = {f"{PACKAGE}.{name}" for name in RUNTIME}
    wrong = sorted(
        f"{name}:{line} {obj}.{attribute}"
        for name, path in _modules().items()
        if name not in runtime and name not in OTHERS_PRIVATE_WRITES
        for line, obj, attribute in _attribute_writes(ast.parse(path.read_text()))
        if _private(attribute) and obj not in ("self", "cls")
    )
    assert wrong == []


def _facade_privates() -> set[str]:
    """The private attributes and methods ``LifecycleManager`` defines (read from its source)."""
    tree = ast.parse((ROOT / "manager.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "LifecycleManager":
            for inner in ast.walk(node):
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.add(inner.name)
            found.update(
                attribute for _, obj, attribute in _attribute_writes(node) if obj == "self"
            )
    return {name for name in found if _private(name)}


def test_nothing_reaches_into_the_facade_but_through_its_seams() -> None:
    """Outside the façade (and ``_view.InternalView``, its documented read-only window),
    a manager's private members are used only where a seam is documented for them."""
    privates = _facade_privates()
    assert {"_runtime", "_persist", "_observer", *FACADE_SEAMS} <= privates  # it was read
    allowed = {f"{PACKAGE}.manager", f"{PACKAGE}._view"}
    wrong = sorted(
        f"{name}:{node.lineno} {ast.unparse(node)}"
        for name, path in _modules().items()
        if name not in allowed
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr in privates
        and node.attr not in FACADE_SEAMS
        and ast.unparse(node.value) not in ("self", "cls")
    )
    assert wrong == []
