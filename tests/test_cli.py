"""Every bad argument to ``livekit-lifecycle`` is a one-line error and a non-zero exit.

Run in-process through :func:`livekit_lifecycle.cli.main` (an exception escaping it
would fail the test: that is the traceback a user would see), and once as a real
process. Nothing here needs a server: each argument is refused before connecting.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from livekit_lifecycle.cli import TRACEBACK_ENV, main
from livekit_lifecycle.render import _command as render_command
from livekit_lifecycle.stores import open_store


def _run(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(arguments)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code if isinstance(exc.code, int) else 2
    return code, capsys.readouterr().err


def _snapshots(folder: Path) -> dict[str, Path]:
    files = {
        "deep": "[" * 100_000 + "]" * 100_000,
        "long-int": '{"key": "a", "state": "active", "cleanups": ' + "9" * 5000 + "}",
        "not-json": "[[[",
        "huge-number": '{"a": 1e999}',
        "wrong-shape": json.dumps({"key": "a", "state": "nope", "history": [1]}),
        "nan-time": json.dumps(
            {"key": "a", "state": "active", "history": [{"at": "NaN", "trigger": "t"}]}
        ),
    }
    paths = {}
    for name, text in files.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(text)
    paths["binary"] = folder / "binary.json"
    paths["binary"].write_bytes(bytes(range(256)) * 10)
    paths["folder"] = folder / "folder.json"
    paths["folder"].mkdir()
    return paths


BAD_ARGUMENTS = {
    "unknown command": ["nosuch"],
    "port above range": ["inspect", "--web", "--room", "r", "--port", "70000"],
    "negative port": ["inspect", "--web", "--room", "r", "--port", "-1"],
    "port not a number": ["inspect", "--web", "--room", "r", "--port", "http"],
    "store db path": ["inspect", "--store", "redis://127.0.0.1:6379/sessions"],
    "store db query": ["inspect", "--store", "redis://127.0.0.1:6379?db=x"],
    "store db path, web": ["inspect", "--store", "redis://127.0.0.1:6379/a/b", "--web"],
    "store port": ["inspect", "--store", "redis://127.0.0.1:99999/0"],
    "store scheme": ["inspect", "--store", "mysql://127.0.0.1/0"],
    "unix store without path": ["inspect", "--store", "unix://"],
    "demo grace nan": ["demo", "--offline", "--grace", "nan"],
    "demo grace inf": ["demo", "--offline", "--grace", "inf"],
    "demo grace absurd": ["demo", "--offline", "--grace", "1e300"],
    "demo grace negative": ["demo", "--offline", "--grace", "-1"],
    "render format": ["render", "--format", "gif", "--out", "-"],
    "render missing value": ["render", "--snapshot"],
    "watch grace nan": ["watch", "--room", "r", "--url", "ws://h", "--grace", "nan"],
    "watch bad url": ["watch", "--room", "r", "--url", "ws://[::1", "--api-key", "k"],
}


@pytest.mark.parametrize("arguments", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_a_bad_argument_is_one_line_and_a_non_zero_exit(
    arguments: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    code, err = _run(arguments, capsys)
    assert code != 0
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("livekit-lifecycle"), err


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("deep", "nested too deeply"),
        ("long-int", "cannot be read"),
        ("not-json", "not valid JSON"),
        ("huge-number", "expected an object"),
        ("wrong-shape", "is not a state"),
        ("nan-time", "history[0].at"),
        ("binary", "cannot read snapshot"),
        ("folder", "cannot read snapshot"),
    ],
)
def test_an_absurd_snapshot_file_is_one_line(
    name: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _snapshots(tmp_path)[name]
    arguments = ["render", "--snapshot", str(path), "--format", "mermaid", "--out", "-"]
    code, err = _run(arguments, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and says in err, err


def test_a_snapshot_file_too_large_to_be_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render_command, "_SNAPSHOT_LIMIT", 1024)
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"key": "a", "state": "active", "pad": "x" * 2000}))
    code, err = _run(["render", "--snapshot", str(path), "--out", "-", "-f", "mermaid"], capsys)
    assert code == 2 and "larger than" in err and len(err.strip().splitlines()) == 1, err


def test_an_unexpected_failure_is_still_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A command that fails in a way nobody planned for: the user still gets one line
    # (and the traceback when asking for it).
    def broken(args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(render_command, "run", broken)
    code, err = _run(["render", "--out", "-", "-f", "mermaid"], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "unexpected error: RuntimeError: a bug" in err and TRACEBACK_ENV in err
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    code, err = _run(["render", "--out", "-", "-f", "mermaid"], capsys)
    assert code == 1 and "Traceback" in err


def test_as_a_process_a_bad_argument_has_no_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "livekit_lifecycle", "inspect", "--web", "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "livekit-lifecycle inspect: error: argument --port: 99999 is not a port number"
        " (0 to 65535) (see livekit-lifecycle inspect --help)"
    ]


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1",
        "redis://127.0.0.1:6379/15/",
        "rediss://user:secret@127.0.0.1:6380/2",
        "redis://127.0.0.1:6379?db=3",
        "unix:///run/redis.sock?db=1",
        "redis+cluster://127.0.0.1:7000",
    ],
)
async def test_good_store_urls_are_still_taken(url: str) -> None:
    store = open_store(url)  # no connection is made here
    await store.aclose()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://127.0.0.1:6379/sessions", "the path must be a database number"),
        ("redis://127.0.0.1:6379/0/1", "the path must be a database number"),
        ("redis://127.0.0.1:6379?db=one", "db='one' is not a database number"),
        ("redis://127.0.0.1:65536/0", "Port out of range"),
        ("unix://", "needs a socket path"),
    ],
)
def test_a_bad_redis_url_is_refused_not_read_as_database_0(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        open_store(url)
