"""Headless Chromium for tests: the system's Chromium, driven by Playwright.

No browser is downloaded: :func:`find_chromium` looks for a Chromium already
on the machine (Debian's ``chromium`` package, ``/usr/bin/chromium``) and
:func:`headless_chromium` launches it through Playwright's ``executable_path``.
Needs the ``browser`` extra (``pip install 'livekit-lifecycle[browser]'``,
which brings ``playwright``); ``playwright install`` is never needed.

::

    async with headless_chromium() as browser:
        page = await browser.new_page()
        console = ConsoleLog.attach(page)
        await page.goto(url)
        ...
        console.raise_for_errors()

The pytest plugin (:mod:`livekit_loopback.pytest_plugin`) offers the
same as the ``chromium`` fixture, for tests marked ``browser``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Page

__all__ = [
    "CHROMIUM_ARGS",
    "CHROMIUM_ENV",
    "BrowserUnavailable",
    "ConsoleEntry",
    "ConsoleLog",
    "find_chromium",
    "headless_chromium",
]

CHROMIUM_ENV = "LIVEKIT_LIFECYCLE_CHROMIUM"
"""Environment variable naming the Chromium executable to use (takes precedence)."""

CHROMIUM_ARGS: tuple[str, ...] = (
    # Root in containers and CI: Chromium's sandbox needs user namespaces it may not have.
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    # A machine without internet refuses Chromium's own background connections,
    # many at a time, at every start: switch them off.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    # A microphone and a camera without hardware or a permission prompt.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
)
"""Flags every launch gets (headless is Playwright's default)."""

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserUnavailable(RuntimeError):
    """No Chromium on this machine, or Playwright is not installed. The message says which."""


def find_chromium() -> str | None:
    """The Chromium executable to use: ``$LIVEKIT_LIFECYCLE_CHROMIUM``, else the first on PATH.

    Returns ``None`` when there is none. A variable naming a file that does
    not exist is ignored (so a stale setting falls back to the system's).
    """
    configured = os.environ.get(CHROMIUM_ENV)
    if configured and os.path.isfile(configured):
        return configured
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@asynccontextmanager
async def headless_chromium(
    *, executable: str | None = None, args: Sequence[str] = ()
) -> AsyncIterator[Browser]:
    """A headless Chromium (Playwright ``Browser``) for the duration of the block.

    Args:
        executable: The Chromium to run; default :func:`find_chromium`.
        args: Flags added to :data:`CHROMIUM_ARGS`.

    Raises:
        BrowserUnavailable: when Playwright is not installed or no Chromium is found.
    """
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        raise BrowserUnavailable(
            f"playwright is not installed ({exc}): pip install 'livekit-lifecycle[browser]'"
        ) from None
    path = executable or find_chromium()
    if path is None:
        raise BrowserUnavailable(
            "no Chromium found: install Debian's chromium package (apt-get install chromium)"
            f" or set {CHROMIUM_ENV} to a Chromium executable"
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=path, args=[*CHROMIUM_ARGS, *args]
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass(frozen=True, slots=True)
class ConsoleEntry:
    """One console message or uncaught page error, as the page produced it."""

    kind: str
    """``error``, ``warning``, ``log``... (the console method), or ``pageerror``."""
    text: str
    location: str = ""


@dataclass
class ConsoleLog:
    """Everything a page wrote to its console, plus its uncaught errors and rejections."""

    entries: list[ConsoleEntry] = field(default_factory=list)

    @classmethod
    def attach(cls, page: Page) -> ConsoleLog:
        """Start collecting ``page``'s console messages and page errors."""
        log = cls()
        page.on("console", log._on_console)
        page.on("pageerror", log._on_page_error)
        return log

    def _on_console(self, message: ConsoleMessage) -> None:
        where = message.location
        location = f"{where.get('url', '')}:{where.get('lineNumber', '')}" if where else ""
        self.entries.append(ConsoleEntry(message.type, message.text, location))

    def _on_page_error(self, error: BaseException) -> None:
        self.entries.append(ConsoleEntry("pageerror", str(error)))

    @property
    def errors(self) -> list[ConsoleEntry]:
        """Console errors and uncaught page errors (unhandled rejections included)."""
        return [entry for entry in self.entries if entry.kind in ("error", "pageerror")]

    def matching(self, needle: str) -> list[ConsoleEntry]:
        """Entries of any kind whose text contains ``needle`` (case-insensitive)."""
        lowered = needle.lower()
        return [entry for entry in self.entries if lowered in entry.text.lower()]

    def text(self) -> str:
        """The whole log, one entry a line, for a test artefact."""
        return "\n".join(f"[{e.kind}] {e.text} {e.location}".rstrip() for e in self.entries)

    def raise_for_errors(self, *also: str) -> None:
        """Raise ``AssertionError`` for any error entry, or any entry containing one of ``also``."""
        bad = self.errors + [e for needle in also for e in self.matching(needle)]
        if bad:
            listed = "\n".join(f"  [{e.kind}] {e.text}" for e in dict.fromkeys(bad))
            raise AssertionError(f"the page logged {len(bad)} error(s):\n{listed}")
