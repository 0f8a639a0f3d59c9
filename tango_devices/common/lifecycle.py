"""Server process lifecycle helpers shared by the servers, the supervisor and
the CLI (no tango import).

- Which Tango server a command line runs, matched the way the Starter does.
- Clean-shutdown markers: a server that shuts down on purpose (the Starter's
  DevStop, SIGTERM, ``beamline stop``) leaves a marker with its pid in the run
  directory, so the supervisor can tell a stop from a crash without being its
  parent.
- Test hooks, only when ``BEAMLINE_TEST_HOOKS=1``: crash at start-up on demand.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

RUN_DIR_ENV = "BEAMLINE_RUN_DIR"
TEST_HOOKS_ENV = "BEAMLINE_TEST_HOOKS"


def server_name_from_cmdline(args: list[str]) -> str | None:
    """The Tango server a command line runs, as the Starter sees it.

    ``/usr/lib/tango/Starter vm`` -> ``Starter/vm``; ``.venv/bin/python
    .venv/bin/Motor slit_h`` -> ``Motor/slit_h``.
    """
    if not args:
        return None
    exe = os.path.basename(args[0])
    rest = args[1:]
    if exe.startswith("python") and rest:
        exe = os.path.basename(rest[0])
        if exe.endswith(".py"):
            exe = exe[:-3]
        rest = rest[1:]
    if not rest or rest[0].startswith("-"):
        return None
    return f"{exe}/{rest[0]}"


def run_dir() -> Path | None:
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def _file_name(server: str) -> str:
    return server.replace("/", "_")


def exit_marker(server: str, base: Path | None = None) -> Path | None:
    base = base or run_dir()
    return base / "exits" / _file_name(server) if base else None


def mark_clean_exit(server: str, pid: int | None = None) -> None:
    """Record that this process is shutting down on purpose."""
    path = exit_marker(server)
    if path is None:
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(pid or os.getpid()))


def clear_exit_marker(server: str, pid: int | None = None) -> None:
    """A (re)initialised server is running: drop its marker (only its own)."""
    path = exit_marker(server)
    if path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text()) == (pid or os.getpid()):
            path.unlink()


def was_clean_exit(server: str, pid: int | None, base: Path | None = None) -> bool:
    """Did process ``pid`` of ``server`` shut down on purpose?"""
    path = exit_marker(server, base)
    if path is None or pid is None:
        return False
    try:
        return int(path.read_text()) == pid
    except (OSError, ValueError):
        return False


def test_hooks_enabled() -> bool:
    return os.environ.get(TEST_HOOKS_ENV) == "1"


def crash_at_init_flag(server: str, base: Path | None = None) -> Path | None:
    """While this file exists (and test hooks are on), the server exits during start-up."""
    base = base or run_dir()
    return base / "test-hooks" / "crash-at-init" / _file_name(server) if base else None


def crash_at_init_requested(server: str) -> bool:
    if not test_hooks_enabled():
        return False
    flag = crash_at_init_flag(server)
    return bool(flag and flag.exists())
