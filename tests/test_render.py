"""Diagrams of the statechart: content, highlight, determinism, drift, command and bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from livekit_lifecycle import PARTICIPANT_CHART, LifecycleManager, State
from livekit_lifecycle.cli import main
from livekit_lifecycle.render import (
    INSTALL_GRAPHVIZ,
    MARKDOWN_BEGIN,
    MARKDOWN_END,
    SVG_STAMP,
    GraphvizNotFoundError,
    Highlight,
    RenderError,
    dot_digest,
    embed_in_markdown,
    graphviz_version,
    markdown_block,
    render_statechart,
    to_dot,
    to_mermaid,
)
from livekit_lifecycle.statechart import Edge
from livekit_lifecycle.testing import RoomDriver

from .conftest import MakeManager

ROOT = Path(__file__).resolve().parents[1]
STATECHARTS = ROOT / "statecharts"
REGENERATE = (
    "statecharts/ or the README is out of date with PARTICIPANT_CHART; from the repo root run"
    " `livekit-lifecycle render --out statecharts --embed README.md` and commit the result"
)
HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.usefixtures("graphviz")
SVG = "{http://www.w3.org/2000/svg}"
CHART = PARTICIPANT_CHART
STATES = [state.value for state in CHART.states]

# ---------------------------------------------------------------------- reading the outputs

_DOT_EDGE = re.compile(r'^\s+(\w+) -> (\w+) \[label="([^"]*)"', re.MULTILINE)
_DOT_NODE = re.compile(r'^\s+(\w+) \[label=<.*?, class="([^"]*)"', re.MULTILINE)
_STEPS = re.compile(r"\(steps? ([\d, ]+)\)")


def dot_classes(dot: str) -> dict[str, set[str]]:
    """State name -> classes of its node."""
    return {name: set(classes.split()) for name, classes in _DOT_NODE.findall(dot)}


def dot_current(dot: str) -> list[str]:
    return [name for name, classes in dot_classes(dot).items() if "current" in classes]


def dot_taken(dot: str) -> list[tuple[int, str, str, str]]:
    """(step, source, dest, trigger) for every numbered arrow, in step order."""
    taken = []
    for source, dest, label in _DOT_EDGE.findall(dot):
        found = _STEPS.search(label)
        if found:
            for number in found.group(1).split(", "):
                taken.append((int(number), source, dest, label.split(" ")[0].split("\\n")[0]))
    return sorted(taken)


def mermaid_current(mermaid: str) -> list[str]:
    return re.findall(r"^\s+class (\S+) current$", mermaid, re.MULTILINE)


def svg_groups(svg: bytes, cls: str) -> list[ET.Element]:
    root = ET.fromstring(svg)
    return [g for g in root.iter(f"{SVG}g") if cls in g.get("class", "").split()]


def svg_title(group: ET.Element) -> str:
    title = group.find(f"{SVG}title")
    assert title is not None
    return title.text or ""


def svg_text(svg: bytes) -> str:
    root = ET.fromstring(svg)
    return "\n".join(t.text or "" for t in root.iter(f"{SVG}text"))


def history_path(snapshot_session: dict[str, Any]) -> list[tuple[int, str, str, str]]:
    return [
        (number, step["source"], step["dest"], step["trigger"])
        for number, step in enumerate(snapshot_session["history"], start=1)
    ]


async def alice_in_grace(make_manager: MakeManager, driver: RoomDriver) -> LifecycleManager:
    """A real manager on a driven room: alice came, went, and waits in grace; bob is joining."""
    manager = make_manager(grace_period=30)
    driver.connect("alice", active=True)
    driver.connect("bob")
    await manager.wait_for("alice", State.ACTIVE, timeout=2)
    driver.disconnect("alice")
    await manager.wait_for("alice", State.GRACE, timeout=2)
    await manager.idle()
    return manager


# ---------------------------------------------------------------------- the plain chart


def test_mermaid_has_every_state_trigger_guard_and_pseudostate() -> None:
    text = to_mermaid()
    assert text.startswith("stateDiagram-v2\n")
    for state in STATES:
        assert re.search(rf"^\s+{state}( |$)", text, re.MULTILINE), state
    for trigger in CHART.triggers:
        assert f" : {trigger}" in text, trigger
    for edge in CHART.edges:
        label = edge.label(CHART.guard_map)
        if edge.automatic:
            label = label.replace(edge.trigger, f"{edge.trigger} (automatic)", 1)
        if edge.internal:
            assert f"    {edge.source} : {label} (internal)\n" in text
        else:
            assert f"    {edge.source} --> {edge.target} : {label}\n" in text
    assert f"    [*] --> {CHART.initial}\n" in text
    assert "    removed --> [*]\n" in text
    assert "expire (after grace_period) [current timer]" in text
    arrows = [line for line in text.splitlines() if "-->" in line]
    assert len(arrows) == sum(not e.internal for e in CHART.edges) + 1 + len(CHART.final)


def test_dot_has_every_state_trigger_and_styles_edges_by_kind() -> None:
    text = to_dot()
    assert set(dot_classes(text)) == set(STATES)
    edges = _DOT_EDGE.findall(text)
    assert len(edges) == sum(not e.internal for e in CHART.edges)
    for trigger in CHART.triggers:
        assert f'label="{trigger}' in text or f">{trigger} [" in text, trigger
    lines = {line.strip() for line in text.splitlines()}
    expire = next(line for line in lines if line.startswith('grace -> removed [label="expire'))
    assert '"expire (after grace_period)\\n[current timer]"' in expire
    assert "style=bold" in expire and "delayed" in expire
    automatic = [line for line in lines if "automatic" in line and "->" in line]
    assert len(automatic) == sum(e.automatic for e in CHART.edges)
    assert all("style=dashed" in line for line in automatic)
    assert not [line for line in lines if "->" in line and "internal" in line]
    active = next(line for line in lines if line.startswith("active [label="))
    assert "publish_track [current sid] (internal)" in active
    assert "unpublish_track [current sid] (internal)" in active
    assert f"__initial -> {CHART.initial} " in text
    assert "removed -> __final " in text
    assert "peripheries=2" in next(line for line in lines if line.startswith("removed [label="))


def test_adding_an_edge_to_the_chart_changes_every_diagram() -> None:
    kick = Edge("kick", State.ACTIVE, State.REMOVED, "moderator", guards=("is_current_sid",))
    ping = Edge("ping", State.GRACE, None, "a keepalive")
    chart = dataclasses.replace(CHART, edges=(*CHART.edges, kick, ping))
    mermaid, dot = to_mermaid(chart), to_dot(chart)
    assert "    active --> removed : kick [current sid]\n" in mermaid
    assert "    grace : ping (internal)\n" in mermaid
    assert 'active -> removed [label="kick\\n[current sid]"' in dot
    assert "ping (internal)" in next(line for line in dot.splitlines() if "grace [label=" in line)
    assert "kick" not in to_mermaid() and "kick" not in to_dot()


def test_text_is_identical_across_processes_and_hash_seeds() -> None:
    outputs = set()
    for seed in ("1", "2"):
        for fmt in ("mermaid", "dot"):
            done = subprocess.run(
                [sys.executable, "-m", "livekit_lifecycle", "render", "-f", fmt, "--out", "-"],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONHASHSEED": seed},
                timeout=60,
                check=True,
            )
            outputs.add((fmt, done.stdout))
    assert outputs == {("mermaid", to_mermaid()), ("dot", to_dot())}


@needs_dot
def test_svg_parses_names_every_state_and_is_deterministic(tmp_path: Path) -> None:
    first = render_statechart(format="svg", out=tmp_path / "a.svg")
    second = render_statechart(format="svg", out=tmp_path)
    assert second == tmp_path / "participant.svg"
    assert first.read_bytes() == second.read_bytes()
    svg = first.read_bytes()
    ET.fromstring(svg)
    text = svg_text(svg)
    for state in STATES:
        assert re.search(rf"^{state}$", text, re.MULTILINE), state
    for trigger in CHART.triggers:
        assert trigger in text
    assert sorted(svg_title(g) for g in svg_groups(svg, "state")) == sorted(STATES)
    assert f"<!-- {SVG_STAMP}{dot_digest(to_dot())} -->".encode() in svg


@needs_dot
def test_png_is_written(tmp_path: Path) -> None:
    path = render_statechart(format="png", out=tmp_path)
    assert path == tmp_path / "participant.png"
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# ---------------------------------------------------------------------- one session's path


async def test_highlight_marks_exactly_the_current_state_and_the_path(
    make_manager: MakeManager, driver: RoomDriver, tmp_path: Path
) -> None:
    manager = await alice_in_grace(make_manager, driver)
    # Through JSON, as a snapshot file would be.
    snapshot = json.loads(json.dumps(manager.snapshot()))
    alice = snapshot["alice"]
    assert alice["state"] == "grace"
    expected = [
        (1, "connecting", "active", "activate"),
        (2, "active", "disconnecting", "disconnect"),
        (3, "disconnecting", "cleaned", "cleanup_done"),
        (4, "cleaned", "grace", "hold"),
    ]
    assert history_path(alice) == expected

    for source in (manager, snapshot, alice, manager.get("alice")):
        dot = render_statechart(source, key="alice", format="dot")
        assert dot_current(dot) == ["grace"]
        assert dot_taken(dot) == expected
        classes = dot_classes(dot)
        visited = {name for name, cls in classes.items() if "visited" in cls}
        assert visited == {"connecting", "active", "disconnecting", "cleaned"}
        mermaid = render_statechart(source, key="alice")
        assert mermaid_current(mermaid) == ["grace"]
        assert "    note right of grace : alice is here\n" in mermaid
        assert "    cleaned --> grace : hold (automatic) [grace allowed," in mermaid
        assert mermaid.count("(step ") == 4
    # The plain chart highlights nothing.
    assert dot_current(to_dot()) == [] and mermaid_current(to_mermaid()) == []

    bob = render_statechart(snapshot, key="bob", format="dot")
    assert dot_current(bob) == ["connecting"]
    assert dot_taken(bob) == []

    if HAS_DOT:
        svg = render_statechart(manager, key="alice", format="svg", out=tmp_path).read_bytes()
        assert tmp_path.joinpath("participant-alice.svg").read_bytes() == svg
        assert [svg_title(g) for g in svg_groups(svg, "current")] == ["grace"]
        assert len(svg_groups(svg, "taken")) == 4
        assert "alice is here" in svg_text(svg)


async def test_highlight_follows_a_reconnect(make_manager: MakeManager, driver: RoomDriver) -> None:
    manager = await alice_in_grace(make_manager, driver)
    driver.connect("alice", active=True)
    await manager.wait_for("alice", State.ACTIVE, timeout=2)
    await manager.idle()
    alice = manager.snapshot()["alice"]
    path = history_path(alice)
    assert (5, "grace", "reconnected", "reconnect") in path
    dot = render_statechart(manager, key="alice", format="dot")
    assert dot_current(dot) == ["active"]
    assert dot_taken(dot) == path
    assert dot_classes(dot)["grace"] >= {"visited"}
    assert mermaid_current(render_statechart(alice)) == ["active"]


async def test_rendering_leaves_the_runtime_untouched(
    make_manager: MakeManager, driver: RoomDriver, tmp_path: Path
) -> None:
    manager = await alice_in_grace(make_manager, driver)
    before = (manager.stats, manager.snapshot())
    render_statechart(manager, key="alice", format="dot")
    render_statechart(manager, key="bob")
    if HAS_DOT:
        render_statechart(manager, key="alice", format="svg", out=tmp_path)
    assert (manager.stats, manager.snapshot()) == before
    assert manager.state_of("alice") is State.GRACE


def test_steps_on_a_loop_are_summarised() -> None:
    steps = []
    for _ in range(6):
        steps += [
            {"source": "connecting", "dest": "active", "trigger": "activate"},
            {"source": "active", "dest": "disconnecting", "trigger": "disconnect"},
            {"source": "disconnecting", "dest": "cleaned", "trigger": "cleanup_done"},
            {"source": "cleaned", "dest": "grace", "trigger": "hold"},
            {"source": "grace", "dest": "reconnected", "trigger": "reconnect"},
            {"source": "reconnected", "dest": "connecting", "trigger": "resume"},
        ]
    session = {"key": "loop", "state": "connecting", "history": steps}
    mermaid = render_statechart(session)
    assert "activate [current sid] (steps 1, 7 ... 31: 6 times)" in mermaid
    assert mermaid_current(mermaid) == ["connecting"]


def test_hostile_keys_are_escaped(tmp_path: Path) -> None:
    key = 'a"b<i>;#c\\\n}'
    session = {"key": key, "state": "connecting"}
    mermaid = render_statechart(session)
    assert mermaid_current(mermaid) == ["connecting"]
    assert 'note right of connecting : a"b#lt;i#gt;#59;#35;c\\ } is here\n' in mermaid
    dot = render_statechart(session, format="dot")
    assert "a&quot;b&lt;i&gt;;#c\\ } is here" in dot
    if HAS_DOT:
        path = render_statechart(session, format="svg", out=tmp_path)
        assert path.name == "participant-a_b_i_c.svg"
        assert 'a"b<i>;#c\\ } is here' in svg_text(path.read_bytes())


# ---------------------------------------------------------------------- bad input, API


GOOD = {
    "key": "alice",
    "state": "grace",
    "history": [
        {"source": "cleaned", "dest": "grace", "trigger": "hold", "sid": "PA_1", "at": 1.0},
    ],
}


@pytest.mark.parametrize(
    ("source", "key", "message"),
    [
        ({"alice": GOOD}, "carol", "no session 'carol' in the snapshot (sessions: 'alice')"),
        ({"alice": GOOD, "bob": GOOD}, None, "holds 2 sessions; pick one with key="),
        ({}, None, "the snapshot holds no sessions"),
        ({"alice": [1, 2]}, "alice", "session 'alice': expected an object, got list"),
        ({**GOOD, "state": "lost"}, None, "state: 'lost' is not a state (connecting, active"),
        ({**GOOD, "history": "x"}, None, "history must be a list, got str"),
        ({**GOOD, "history": [{"source": "cleaned", "dest": "grace"}]}, None, "trigger"),
        (
            {**GOOD, "history": [{"source": "grace", "dest": "removed", "trigger": "poof"}]},
            None,
            "history[0] grace --poof--> removed is not a transition of the participant chart",
        ),
        (
            {
                **GOOD,
                "history": [
                    {"source": "connecting", "dest": "active", "trigger": "activate"},
                    {"source": "cleaned", "dest": "grace", "trigger": "hold"},
                ],
            },
            None,
            "history[1] starts in cleaned but history[0] ended in active",
        ),
        ({**GOOD, "state": "active"}, None, "state is active but its last transition ended"),
        (GOOD, "bob", "key 'bob' given with the session of 'alice'"),
        ([GOOD], None, "got list"),
    ],
)
def test_bad_sources_are_rejected_clearly(source: Any, key: str | None, message: str) -> None:
    with pytest.raises(RenderError) as info:
        render_statechart(source, key=key)
    assert message in str(info.value)


def test_bad_arguments_are_rejected_clearly(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="unknown format 'jpeg'; choose one of: mermaid"):
        render_statechart(format="jpeg")
    with pytest.raises(RenderError, match="svg is written to a file: pass out="):
        render_statechart(format="svg")
    with pytest.raises(RenderError, match="key 'alice' given without a manager"):
        render_statechart(key="alice")
    with pytest.raises(RenderError, match="holds no sessions"):
        Highlight.of({})


async def test_unknown_key_of_a_live_manager(make_manager: MakeManager, driver: RoomDriver) -> None:
    manager = await alice_in_grace(make_manager, driver)
    with pytest.raises(RenderError, match=r"no session 'carol' in the manager \(sessions: 'al"):
        render_statechart(manager, key="carol")
    with pytest.raises(RenderError, match="holds 2 sessions"):
        render_statechart(manager)


# ---------------------------------------------------------------------- the command


def test_command_writes_the_default_formats(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "charts"
    assert main(["render", "--out", str(out)]) == 0
    assert (out / "participant.mmd").read_text() == to_mermaid()
    assert (out / "participant.dot").read_text() == to_dot()
    assert (out / "participant.svg").exists() is HAS_DOT
    assert f"wrote {out / 'participant.mmd'}" in capsys.readouterr().out


def test_command_prints_one_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "--format", "dot", "--out", "-"]) == 0
    assert capsys.readouterr().out == to_dot()


async def test_command_highlights_a_session_from_a_snapshot_file(
    make_manager: MakeManager,
    driver: RoomDriver,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manager = await alice_in_grace(make_manager, driver)
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(json.dumps(manager.snapshot()))
    argv = ["render", "--snapshot", str(snapshot), "--key", "alice", "--out", str(tmp_path)]
    assert main([*argv, "--format", "mermaid,dot"]) == 0
    mermaid = (tmp_path / "participant-alice.mmd").read_text()
    assert mermaid == render_statechart(manager, key="alice")
    assert mermaid_current(mermaid) == ["grace"]
    assert dot_current((tmp_path / "participant-alice.dot").read_text()) == ["grace"]
    if HAS_DOT:
        assert main([*argv, "--format", "svg"]) == 0
        svg = (tmp_path / "participant-alice.svg").read_bytes()
        assert [svg_title(g) for g in svg_groups(svg, "current")] == ["grace"]
    capsys.readouterr()


def _snapshot_file(directory: Path, text: str) -> str:
    path = directory / "s.json"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (
            lambda d: ["--snapshot", _snapshot_file(d, json.dumps({"alice": GOOD})), "--key", "x"],
            "snapshot {d}/s.json: no session 'x' in the snapshot (sessions: 'alice')",
        ),
        (
            lambda d: ["--snapshot", _snapshot_file(d, '{"alice": {"state": "grace",')],
            "snapshot {d}/s.json is not valid JSON: Expecting property name",
        ),
        (
            lambda d: ["--snapshot", _snapshot_file(d, '{"a": {"state": 3, "history": []}}')],
            "session 'a': state: 3 is not a state",
        ),
        (
            lambda d: ["--snapshot", str(d / "missing.json")],
            "cannot read snapshot {d}/missing.json: No such file or directory",
        ),
        (lambda d: ["--format", "svg,jpeg"], "unknown format 'jpeg'; choose from: mermaid"),
        (lambda d: ["--key", "alice"], "--key needs --snapshot FILE.json"),
        (lambda d: ["--format", "svg", "--out", "-"], "--out - prints exactly one text format"),
        (
            lambda d: ["--embed", _snapshot_file(d, "no markers here\n")],
            "expected one <!-- statechart:begin --> and one <!-- statechart:end --> line",
        ),
    ],
)
def test_command_rejects_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_args: Any, message: str
) -> None:
    argv = ["render", "-f", "mermaid", "--out", str(tmp_path / "out"), *make_args(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("livekit-lifecycle render: error: ")
    assert message.format(d=tmp_path) in err
    assert "Traceback" not in err


def test_without_graphviz_text_is_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An empty PATH: `dot` is really not found, as on a machine without Graphviz.
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "out"

    assert main(["render", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Graphviz's `dot` program was not found on PATH, so svg was not written" in err
    assert INSTALL_GRAPHVIZ in err
    assert (out / "participant.mmd").read_text() == to_mermaid()
    assert (out / "participant.dot").read_text() == to_dot()
    assert not (out / "participant.svg").exists()

    assert main(["render", "--out", str(out), "--format", "all"]) == 1
    assert "so svg and png was not written (mermaid and dot was)" in capsys.readouterr().err
    with pytest.raises(GraphvizNotFoundError, match="apt-get install graphviz"):
        render_statechart(format="svg", out=tmp_path)


def test_embed_replaces_only_the_marked_block(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\n\n{MARKDOWN_BEGIN}\nold\n{MARKDOWN_END}\n\nafter\n")
    charts = tmp_path / "charts"
    assert main(["render", "-f", "mermaid", "--out", str(charts), "--embed", str(doc)]) == 0
    text = doc.read_text()
    assert text == f"# Title\n\n{markdown_block(to_mermaid())}\n\nafter\n"
    # With the svg present, the block links it relative to the document.
    (charts / "participant.svg").write_text("<svg/>")
    assert main(["render", "-f", "mermaid", "--out", str(charts), "--embed", str(doc)]) == 0
    assert "[participant.svg](charts/participant.svg)" in doc.read_text()
    with pytest.raises(RenderError, match="comes before"):
        embed_in_markdown(f"{MARKDOWN_END}\n{MARKDOWN_BEGIN}\n", "x")


# ---------------------------------------------------------------------- committed diagrams


def test_committed_mermaid_is_current() -> None:
    assert (STATECHARTS / "participant.mmd").read_text("utf-8") == to_mermaid(), REGENERATE


def test_committed_dot_is_current() -> None:
    assert (STATECHARTS / "participant.dot").read_text("utf-8") == to_dot(), REGENERATE


def test_committed_svg_was_laid_out_from_the_current_dot() -> None:
    svg = (STATECHARTS / "participant.svg").read_bytes()
    ET.fromstring(svg)
    assert f"<!-- {SVG_STAMP}{dot_digest(to_dot())} -->".encode() in svg, REGENERATE


@needs_dot
def test_committed_svg_is_what_graphviz_renders_now(tmp_path: Path) -> None:
    committed = (STATECHARTS / "participant.svg").read_bytes()
    fresh = render_statechart(format="svg", out=tmp_path).read_bytes()
    made_by = re.search(rb"Generated by graphviz version (.+?)\s*\n", committed)
    assert made_by is not None
    if made_by.group(1).decode() != graphviz_version():
        # Another Graphviz lays out with other coordinates; the DOT stamp test
        # above still proves the SVG matches the chart. Compare all but numbers.
        def shape(svg: bytes) -> bytes:
            return re.sub(rb"-?\d+(\.\d+)?", b"0", re.sub(rb"<!-- Generated by[^>]*-->", b"", svg))

        assert shape(committed) == shape(fresh), REGENERATE
        pytest.skip(
            f"statecharts/participant.svg was laid out by Graphviz {made_by.group(1).decode()},"
            f" this machine has {graphviz_version()}: compared everything but coordinates"
        )
    assert committed == fresh, REGENERATE


def test_the_inspector_ships_the_committed_svg() -> None:
    # The live page shows the default chart from this copy where Graphviz is
    # not installed; the tests above check the committed SVG against the chart
    # (its DOT stamp) and, where Graphviz exists, against what it lays out now.
    shipped = ROOT / "src" / "livekit_lifecycle" / "inspector" / "static" / "chart.svg"
    assert shipped.read_bytes() == (STATECHARTS / "participant.svg").read_bytes(), (
        f"{REGENERATE}; then cp statecharts/participant.svg {shipped.relative_to(ROOT)}"
    )


def test_readme_embeds_the_current_chart() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    block = markdown_block(to_mermaid(), "statecharts/participant.svg")
    assert block in readme, REGENERATE
