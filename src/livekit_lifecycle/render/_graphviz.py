"""Running Graphviz's ``dot``: laying out SVG and PNG, stamping the SVG, its version, its errors."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess

from ._formats import ImageFormat

__all__ = [
    "GraphvizError",
    "GraphvizNotFoundError",
    "INSTALL_GRAPHVIZ",
    "SVG_STAMP",
    "dot_digest",
    "graphviz_version",
]

SVG_STAMP = "livekit-lifecycle: laid out from DOT sha256="
"""Prefix of the comment every rendered SVG carries, followed by :func:`dot_digest` of its DOT."""

INSTALL_GRAPHVIZ = (
    "Install Graphviz: `sudo apt-get install graphviz` (Debian/Ubuntu),"
    " `brew install graphviz` (macOS), or see https://graphviz.org/download/"
)

_DOT_TIMEOUT = 60.0


class GraphvizError(RuntimeError):
    """Graphviz's ``dot`` failed to lay out a diagram."""


class GraphvizNotFoundError(GraphvizError):
    """Graphviz's ``dot`` program is not installed (not on ``PATH``)."""

    def __init__(self) -> None:
        super().__init__(f"Graphviz's `dot` program was not found on PATH. {INSTALL_GRAPHVIZ}.")


def _graphviz(dot_text: str, fmt: ImageFormat) -> bytes:
    """Lay out ``dot_text`` with Graphviz's ``dot`` and return the ``fmt`` bytes."""
    binary = shutil.which("dot")
    if binary is None:
        raise GraphvizNotFoundError()
    try:
        done = subprocess.run(
            [binary, f"-T{fmt}"],
            input=dot_text.encode("utf-8"),
            capture_output=True,
            timeout=_DOT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GraphvizError(f"running {binary} failed: {exc}") from exc
    if done.returncode != 0 or not done.stdout:
        message = done.stderr.decode("utf-8", "replace").strip() or "no output"
        raise GraphvizError(f"{binary} -T{fmt} exited with {done.returncode}: {message}")
    if fmt == "svg":
        return _stamp_svg(done.stdout, dot_text)
    return done.stdout


def _stamp_svg(svg: bytes, dot_text: str) -> bytes:
    # Records which DOT text the picture was laid out from, so a check can
    # tell a stale SVG from a fresh one without Graphviz installed. Graphviz
    # itself writes nothing variable (no date, no path) into its SVG.
    stamp = f"<!-- {SVG_STAMP}{dot_digest(dot_text)} -->\n".encode()
    at = svg.find(b"<svg")
    return svg if at < 0 else svg[:at] + stamp + svg[at:]


def dot_digest(dot_text: str) -> str:
    """The sha256 an SVG written by :func:`render_statechart` records for its DOT source."""
    return hashlib.sha256(dot_text.encode("utf-8")).hexdigest()


def graphviz_version() -> str | None:
    """``dot -V``'s version string (``"2.43.0 (0)"``), or ``None`` without Graphviz."""
    binary = shutil.which("dot")
    if binary is None:
        return None
    try:
        done = subprocess.run([binary, "-V"], capture_output=True, timeout=_DOT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(rb"version\s+(.+?)\s*$", done.stderr + done.stdout, re.MULTILINE)
    return found.group(1).decode("utf-8", "replace") if found else None
