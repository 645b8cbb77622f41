"""Every code block of README.md and docs/*.md runs as written (README, "Docs snippets").

Each ```python block is one of:

- a **test** (it defines ``test_*`` functions): run by pytest, in one nested session for all
  such blocks, set up as docs/testing.md tells users to (pytest-asyncio in auto mode, the
  ``livekit_loopback`` pytest plugin, registered by its entry point), with ``examples/``
  importable;
- a **script** (anything else): written to a file and run with ``python``;
- a **fragment**, marked in the Markdown by ``<!-- snippet: fragment (why it cannot run) -->``
  on the line before the fence: compiled (top-level ``await`` allowed), and its imports from
  ``livekit`` / ``livekit_lifecycle`` / ``livekit_loopback`` are resolved, so renamed APIs are
  caught.

A block that imports ``livekit.agents`` is skipped where livekit-agents is not installed.
Each ```bash block's commands are checked where that is practical: ``livekit-lifecycle``
and ``python -m benchmarks`` command lines are accepted by the real argument parsers,
``pip install`` extras exist in pyproject.toml, and files and test paths exist.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from livekit_lifecycle.cli import build_parser
from livekit_loopback.browser_client import DEFAULT_PREFIX, LIVEKIT_CLIENT_ENV
from livekit_loopback.pytest_plugin import (
    CHROMIUM,
    LIVEKIT_CLIENT,
    REDIS_SERVER,
    OptionalPackage,
    skip_missing,
)
from livekit_loopback.support import needs_network

from .conftest import GRAPHVIZ

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<kind>[\w-]+)\s*(?:\((?P<why>.*)\))?\s*-->\s*$")
MARKER_KINDS = {"fragment"}
SHELLS = {"bash", "sh", "shell", "console"}
HAS_AGENTS = importlib.util.find_spec("livekit.agents") is not None
TIMEOUT = 180
KNOWN_PACKAGES: dict[str, OptionalPackage] = {
    package.name: package for package in (CHROMIUM, GRAPHVIZ, LIVEKIT_CLIENT, REDIS_SERVER)
}


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int
    """1-based line of the opening fence."""
    language: str
    code: str
    marker: str | None
    """The ``<!-- snippet: ... -->`` kind given on the line before the fence, if any."""
    why: str | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def module(self) -> str:
        """A module name for the nested pytest session."""
        return "test_" + re.sub(r"\W", "_", f"{self.page.stem}_{self.line}").lower()

    @property
    def kind(self) -> str:
        if self.marker == "fragment":
            return "fragment"
        try:
            tree = ast.parse(self.code)
        except SyntaxError:
            return "script"  # test_script_runs says what is wrong
        defines_tests = any(
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test_")
            for node in tree.body
        )
        return "test" if defines_tests else "script"

    def imports(self) -> Iterator[tuple[str, list[str]]]:
        """(module, names) of every import statement (names empty for ``import x``)."""
        try:
            tree = ast.parse(self.code)
        except SyntaxError:
            return
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, []
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                yield node.module, [alias.name for alias in node.names]

    @property
    def needs_agents(self) -> bool:
        return any(
            module in {"livekit.agents", "livekit_lifecycle.agents"}
            or module.startswith("livekit.agents.")
            or (module in {"livekit", "livekit_lifecycle"} and "agents" in names)
            for module, names in self.imports()
        )

    @property
    def uses_network(self) -> bool:
        return "LoopbackServer" in self.code or "loopback_server" in self.code


def find_snippets(pages: list[Path]) -> list[Snippet]:
    snippets = []
    for page in pages:
        lines = page.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            opening = FENCE.match(lines[index])
            if opening is None or not opening["language"]:
                index += 1
                continue
            end = index + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            indent = len(opening["indent"])
            code = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
            previous = next((ln for ln in reversed(lines[:index]) if ln.strip()), "")
            marker = MARKER.match(previous)
            snippets.append(
                Snippet(
                    page,
                    index + 1,
                    opening["language"],
                    code,
                    marker["kind"] if marker else None,
                    marker["why"] if marker else None,
                )
            )
            index = end + 1
    return snippets


SNIPPETS = find_snippets(PAGES)
PYTHON = [s for s in SNIPPETS if s.language == "python"]
SHELL = [s for s in SNIPPETS if s.language in SHELLS]


def _param(snippet: Snippet) -> object:
    marks = [pytest.mark.e2e] if snippet.uses_network else []
    if snippet.uses_network and "LoopbackServer(" in snippet.code:
        marks.append(needs_network)  # the fixture skips by itself; a direct server does not
    return pytest.param(snippet, id=snippet.name, marks=marks)


def _skip_without_agents(snippet: Snippet) -> None:
    if snippet.needs_agents and not HAS_AGENTS:
        pytest.skip("the snippet needs livekit.agents, which is not installed")


# --------------------------------------------------------------------------- the conventions


def test_snippets_are_found() -> None:
    assert {s.page.name for s in PYTHON} >= {"README.md", "testing.md", "agents.md"}
    assert {s.kind for s in PYTHON} == {"test", "script", "fragment"}
    assert SHELL_COMMANDS


def test_every_marker_is_known_gives_a_reason_and_precedes_a_fence() -> None:
    problems = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not re.match(r"\s*<!--\s*snippet", line):
                continue  # (prose may quote the marker)
            marker = MARKER.match(line)
            following = next((ln for ln in lines[number:] if ln.strip()), "")
            fence = FENCE.match(following)
            if marker is None or marker["kind"] not in MARKER_KINDS:
                problems.append(f"{page.name}:{number}: unknown marker {line.strip()!r}")
            elif not (marker["why"] or "").strip():
                problems.append(f"{page.name}:{number}: say why in parentheses: {line.strip()!r}")
            elif fence is None or fence["language"] != "python":
                problems.append(f"{page.name}:{number}: not followed by a ```python block")
    assert problems == []


# --------------------------------------------------------------------------- python blocks


@pytest.mark.parametrize("snippet", [_param(s) for s in PYTHON if s.kind == "fragment"])
def test_fragment_compiles_and_its_imports_resolve(snippet: Snippet) -> None:
    compile(snippet.code, snippet.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    _skip_without_agents(snippet)
    for module_name, names in snippet.imports():
        if module_name.split(".")[0] not in {"livekit", "livekit_lifecycle", "livekit_loopback"}:
            continue  # the reader's own modules (or the seed's, in docs/migrating.md)
        module = importlib.import_module(module_name)
        for name in names:
            if not hasattr(module, name):
                with contextlib.suppress(ImportError):
                    importlib.import_module(f"{module_name}.{name}")  # a submodule
            assert hasattr(module, name), f"{snippet.name}: cannot import {name} from {module_name}"


@pytest.mark.parametrize("snippet", [_param(s) for s in PYTHON if s.kind == "script"])
def test_script_runs(snippet: Snippet, tmp_path: Path) -> None:
    try:
        compile(snippet.code, snippet.name, "exec")
    except SyntaxError as exc:
        pytest.fail(
            f"{snippet.name} does not run as a script ({exc.msg}): make it runnable, or mark it"
            " <!-- snippet: fragment (why) -->"
        )
    _skip_without_agents(snippet)
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{snippet.name} failed:\n{done.stdout}\n{done.stderr}"


@dataclass(frozen=True)
class NestedRun:
    results: dict[str, list[tuple[str, str, str]]]
    """Snippet module -> (test name, outcome, detail) per test case."""
    output: str


@pytest.fixture(scope="module")
def nested_run(tmp_path_factory: pytest.TempPathFactory) -> NestedRun:
    """Every runnable test snippet in one pytest session, configured as docs/testing.md says."""
    project = tmp_path_factory.mktemp("docs-tests")
    (project / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    for snippet in PYTHON:
        if snippet.kind == "test" and not (snippet.needs_agents and not HAS_AGENTS):
            (project / f"{snippet.module}.py").write_text(snippet.code, encoding="utf-8")
    report = project / "report.xml"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "examples"), str(ROOT)]))
    # livekit-client installed in this checkout serves the nested session too.
    if (ROOT / DEFAULT_PREFIX).is_dir():
        env.setdefault(LIVEKIT_CLIENT_ENV, str(ROOT / DEFAULT_PREFIX))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        check=False,
    )
    results: dict[str, list[tuple[str, str, str]]] = {}
    with contextlib.suppress(FileNotFoundError):
        for case in ET.parse(report).getroot().iter("testcase"):
            module = (case.get("classname") or case.get("name") or "").split(".")[0]
            outcome, detail = "passed", ""
            for child in case:
                if child.tag in {"failure", "error", "skipped"}:
                    outcome = child.tag
                    detail = (child.get("message") or "") + "\n" + (child.text or "")
            results.setdefault(module, []).append((case.get("name") or "", outcome, detail))
    return NestedRun(results, done.stdout + done.stderr)


@pytest.mark.parametrize("snippet", [_param(s) for s in PYTHON if s.kind == "test"])
def test_test_snippet_passes_under_pytest(
    snippet: Snippet, nested_run: NestedRun, request: pytest.FixtureRequest
) -> None:
    _skip_without_agents(snippet)
    cases = nested_run.results.get(snippet.module)
    assert cases, f"{snippet.name}: no test ran\n{nested_run.output}"
    failed = [
        f"{name}: {detail}" for name, outcome, detail in cases if outcome in {"failure", "error"}
    ]
    assert failed == [], f"{snippet.name}:\n" + "\n".join(failed)
    skipped = [detail for _, outcome, detail in cases if outcome == "skipped"]
    if skipped:
        reason = skipped[0].strip()
        # A snippet skipped for want of a system package counts in the run's summary of those.
        needs = re.match(r"needs ([^:]+): (.*)", reason, re.S)
        names = needs.group(1).split(", ") if needs else []
        if needs and all(name in KNOWN_PACKAGES for name in names):
            packages = [KNOWN_PACKAGES[name] for name in names]
            skip_missing(request, packages, f"{snippet.name}: {needs.group(2)}")
        pytest.skip(f"{snippet.name} skipped: {reason}")


# --------------------------------------------------------------------------- shell blocks


def _commands(snippet: Snippet) -> Iterator[tuple[str, list[str]]]:
    for raw in snippet.code.splitlines():
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        for command in line.split("&&"):
            words = shlex.split(command)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
                words.pop(0)  # VAR=value prefixes
            if words:
                yield command.strip(), words


SHELL_COMMANDS = [
    pytest.param(words, id=f"{s.name} {text}")
    for s in SHELL
    for text, words in _commands(s)
    if Path(words[0]).name in {"livekit-lifecycle", "pip", "python", "python3", "pytest"}
]


def _parses(
    parser: argparse.ArgumentParser, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line is accepted by the program's own parser (its options exist)."""
    code: object = 0
    try:
        parser.parse_args(args)
    except SystemExit as exc:  # --help exits 0, a bad option 2
        code = exc.code
    assert code == 0, capsys.readouterr().err


def _extras(requirement: str) -> set[str]:
    """The optional-dependencies table of the pyproject.toml ``requirement`` names (this
    project's, or livekit-loopback's); tomllib is 3.11+."""
    project = ROOT / "livekit-loopback" if "livekit-loopback" in requirement else ROOT
    text = (project / "pyproject.toml").read_text(encoding="utf-8")
    table = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", table, re.M))


@pytest.mark.parametrize("words", SHELL_COMMANDS)
def test_shell_command_exists(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    program, args = Path(words[0]).name, words[1:]
    if program == "livekit-lifecycle":
        _parses(build_parser(), args, capsys)
    elif program == "pip":
        for requirement in args:
            for wanted in re.findall(r"\[([\w,-]+)\]", requirement):
                extras = _extras(requirement)
                assert set(wanted.split(",")) <= extras, f"no such extra: {requirement}"
    elif program == "pytest" or args[:2] == ["-m", "pytest"]:
        paths = [
            a.split("::")[0] for a in args if a.startswith(("tests/", "livekit-loopback/tests/"))
        ]
        assert all((ROOT / p).exists() for p in paths), paths
    elif args[:2] == ["-m", "benchmarks"]:
        from benchmarks.runner import build_parser as benchmarks_parser

        _parses(benchmarks_parser(), args[2:], capsys)
    elif args and args[0].endswith(".py"):
        assert (ROOT / args[0]).is_file(), args[0]
