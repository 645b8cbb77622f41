"""The ``livekit-lifecycle render`` command: its options and :func:`run`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from livekit_lifecycle.statechart import PARTICIPANT_CHART

from ._api import output_name, render_statechart
from ._errors import RenderError
from ._formats import DEFAULT_FORMATS, FORMATS, TextFormat
from ._graphviz import INSTALL_GRAPHVIZ, GraphvizError, GraphvizNotFoundError
from ._highlight import Highlight
from ._markdown import MARKDOWN_BEGIN, MARKDOWN_END, embed_in_markdown, markdown_block
from ._mermaid import to_mermaid

__all__ = ["configure_parser", "run"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``livekit-lifecycle render``."""
    parser.description = (
        "Write the participant statechart (mermaid, dot, svg, png). With --snapshot,"
        " highlight one session's current state and the path it took."
    )
    parser.add_argument(
        "--format",
        "-f",
        action="append",
        metavar="FORMAT",
        help="mermaid, dot, svg, png or all; repeat or comma-separate for several"
        f" (default: {','.join(DEFAULT_FORMATS)}). svg/png need Graphviz's dot.",
    )
    parser.add_argument(
        "--out",
        "-o",
        default=".",
        metavar="DIR",
        help="directory to write into, created if missing (default: the current"
        " directory); '-' prints one text format to stdout",
    )
    parser.add_argument(
        "--snapshot",
        metavar="FILE.json",
        help="JSON of manager.snapshot() (or one session.as_dict()); '-' reads stdin",
    )
    parser.add_argument(
        "--key",
        metavar="KEY",
        help="session key to highlight (optional when the snapshot holds one session)",
    )
    parser.add_argument(
        "--embed",
        metavar="FILE.md",
        help=f"also rewrite the block between {MARKDOWN_BEGIN} and {MARKDOWN_END}"
        " in FILE.md with the mermaid chart and a link to the svg",
    )


def run(args: argparse.Namespace) -> int:
    """``livekit-lifecycle render``. Exit codes: 0 ok, 1 Graphviz missing or failing, 2 bad input.

    Without Graphviz, mermaid and dot are still written; the exit code is 1
    only when svg or png were asked for with ``--format``.
    """
    err = sys.stderr
    try:
        formats, explicit = _formats(args.format)
        highlight = _load_highlight(args.snapshot, args.key)
    except RenderError as exc:
        return _fail(err, str(exc), 2)
    if args.out == "-":
        if len(formats) != 1 or formats[0] not in ("mermaid", "dot") or args.embed:
            return _fail(err, "--out - prints exactly one text format (mermaid or dot)", 2)
        text_format: TextFormat = "mermaid" if formats[0] == "mermaid" else "dot"
        sys.stdout.write(render_statechart(highlight, format=text_format))
        return 0
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(err, f"cannot create {out}: {exc.strerror or exc}", 1)
    status = 0
    missing_graphviz = False
    # Text first: they need nothing installed and are written whatever Graphviz does.
    for fmt in sorted(formats, key=FORMATS.index):
        path = out / output_name(PARTICIPANT_CHART, highlight, fmt)
        try:
            render_statechart(highlight, format=fmt, out=path)
        except GraphvizNotFoundError:
            missing_graphviz = True
            continue
        except GraphvizError as exc:
            _fail(err, str(exc), 1)
            status = 1
            continue
        except OSError as exc:
            return _fail(err, f"cannot write {exc.filename or out}: {exc.strerror or exc}", 1)
        print(f"wrote {path}")
    if missing_graphviz:
        skipped = " and ".join(f for f in formats if f in ("svg", "png"))
        written = " and ".join(f for f in formats if f in ("mermaid", "dot")) or "nothing else"
        err.write(
            f"livekit-lifecycle render: Graphviz's `dot` program was not found on PATH,"
            f" so {skipped} was not written ({written} was).\n{INSTALL_GRAPHVIZ}\n"
        )
        if any(f in explicit for f in ("svg", "png")):
            status = 1
    if args.embed:
        try:
            changed = _embed(
                Path(args.embed), to_mermaid(PARTICIPANT_CHART, highlight), out, highlight
            )
        except RenderError as exc:
            return _fail(err, f"{args.embed}: {exc}", 2)
        except OSError as exc:
            return _fail(err, f"cannot update {args.embed}: {exc.strerror or exc}", 1)
        print(f"updated {args.embed}" if changed else f"{args.embed} is up to date")
    return status


def _formats(values: Sequence[str] | None) -> tuple[list[str], set[str]]:
    """(formats to write in order, formats named on the command line)."""
    if not values:
        return list(DEFAULT_FORMATS), set()
    chosen: list[str] = []
    for value in values:
        for name in (part.strip().lower() for part in value.split(",")):
            if name == "all":
                chosen += FORMATS
            elif name in FORMATS:
                chosen.append(name)
            else:
                raise RenderError(
                    f"unknown format {name!r}; choose from: {', '.join(FORMATS)}, all"
                )
    unique = list(dict.fromkeys(chosen))
    return unique, set(unique)


_SNAPSHOT_LIMIT = 64 * 2**20
"""Characters of a snapshot file read at most: a manager's snapshot is far smaller."""


def _load_highlight(snapshot: str | None, key: str | None) -> Highlight | None:
    if snapshot is None:
        if key is not None:
            raise RenderError("--key needs --snapshot FILE.json to read the session from")
        return None
    name = "stdin" if snapshot == "-" else snapshot
    try:
        if snapshot == "-":
            raw = sys.stdin.read(_SNAPSHOT_LIMIT + 1)
        else:
            with Path(snapshot).open(encoding="utf-8") as file:
                raw = file.read(_SNAPSHOT_LIMIT + 1)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RenderError(f"cannot read snapshot {name}: {reason}") from None
    if len(raw) > _SNAPSHOT_LIMIT:
        raise RenderError(
            f"snapshot {name} is larger than {_SNAPSHOT_LIMIT // 2**20} MiB: not a snapshot"
        )
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RenderError(
            f"snapshot {name} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise RenderError(f"snapshot {name} is nested too deeply to be a snapshot") from None
    except ValueError as exc:  # an integer too long to convert, for one
        raise RenderError(f"snapshot {name} cannot be read: {exc}") from None
    try:
        highlight = Highlight.of(data, key)
        highlight.check(PARTICIPANT_CHART)
    except RenderError as exc:
        raise RenderError(f"snapshot {name}: {exc}") from None
    return highlight


def _embed(markdown: Path, mermaid: str, out: Path, highlight: Highlight | None) -> bool:
    document = markdown.read_text("utf-8")
    svg = out / output_name(PARTICIPANT_CHART, highlight, "svg")
    link = None
    if svg.exists():
        link = Path(os.path.relpath(svg.resolve(), markdown.resolve().parent)).as_posix()
    updated = embed_in_markdown(document, markdown_block(mermaid, link))
    if updated == document:
        return False
    markdown.write_bytes(updated.encode("utf-8"))
    return True


def _fail(stream: TextIO, message: str, code: int) -> int:
    stream.write(f"livekit-lifecycle render: error: {message}\n")
    return code
