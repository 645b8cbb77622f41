"""``python -m livekit_loopback.browser_client install [--prefix DIR]``."""

from __future__ import annotations

import argparse
import sys

from . import DEFAULT_PREFIX, LIVEKIT_CLIENT_ENV, LivekitClientUnavailable, install_livekit_client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m livekit_loopback.browser_client",
        description="Install the pinned livekit-client the browser test page serves.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="npm ci the pinned livekit-client")
    install.add_argument(
        "--prefix",
        default=None,
        help=f"npm prefix folder (default: ${LIVEKIT_CLIENT_ENV}, else {DEFAULT_PREFIX})",
    )
    args = parser.parse_args(argv)
    try:
        dist = install_livekit_client(args.prefix)
    except LivekitClientUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
