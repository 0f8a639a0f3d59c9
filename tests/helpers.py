"""Helpers for tests that run real processes. Never imported at runtime."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BEAMLINE = str(BIN / "beamline")


def load_sardana_module(relative: str):
    """A module of sardana_macros/ loaded from its file as the Pool or the
    MacroServer loads it (controllers and macros are not a package):
    ``load_sardana_module("controllers/BeamlineMotorCtrl.py")``."""
    import importlib.util

    path = PROJECT / "sardana_macros" / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.05,
    on_timeout: Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``
    (and what ``on_timeout`` returns: the state to look at)."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc})" if last_exc else ""
            if on_timeout is not None:
                try:
                    detail += f"\n{on_timeout()}"
                except Exception as exc:  # noqa: BLE001
                    detail += f"\n(could not describe the state: {exc})"
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def poll_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> bool:
    """Like :func:`wait_until`, but says whether it came instead of failing."""
    try:
        wait_until(predicate, timeout, "", interval)
    except AssertionError:
        return False
    return True


class BeamlineRun:
    """A whole beamline started with the real `beamline` CLI in its own run
    directory, on free ports, with a loopback-only database."""

    def __init__(self, run_dir: Path, config_dir: Path | None = None, port: int | None = None):
        self.run_dir = Path(run_dir)
        self.config_dir = Path(config_dir) if config_dir else PROJECT / "db_config"
        self.port = port or free_port()
        self.tango_host = f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("TANGO_HOST", None)
        env.pop("BEAMLINE_RUN_DIR", None)
        env.pop("BEAMLINE_CONFIG_DIR", None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def cli(
        self, *args: str, check: bool = True, timeout: float = 180, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        cmd = [
            BEAMLINE,
            "--run-dir",
            str(self.run_dir),
            "--config-dir",
            str(self.config_dir),
            *args,
        ]
        proc = subprocess.run(
            cmd, env=env or self.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"`beamline {' '.join(args)}` exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def up(self, *extra: str, env: dict | None = None) -> dict:
        proc = self.cli(
            "up",
            "--port",
            str(self.port),
            "--db-bind",
            "127.0.0.1",
            "--listen",
            "127.0.0.1",
            "--sim-auto-ports",
            "--json",
            *extra,
            env=env,
        )
        return json.loads(proc.stdout)

    def down(self) -> dict:
        return json.loads(self.cli("down", "--json").stdout)

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def state(self) -> dict:
        return json.loads((self.run_dir / "state.json").read_text())

    def sim_state(self) -> dict:
        return json.loads((self.run_dir / "sim.json").read_text())

    def sim(self, request: dict) -> dict:
        s = self.sim_state()
        with socket.create_connection((s["listen"], s["control_port"]), timeout=5) as conn:
            conn.sendall((json.dumps(request) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        reply = json.loads(data)
        assert reply.get("ok"), reply
        return reply

    def proxy(self, device: str, timeout_ms: int = 3000):
        import tango

        p = tango.DeviceProxy(f"tango://{self.tango_host}/{device}")
        p.set_timeout_millis(timeout_ms)
        return p

    def server_pids(self, server: str) -> list[int]:
        """The processes running ``server`` (``Motor/sample_x``) for this beamline."""
        from beamline import procs

        return procs.server_pids(self.run_dir, [server]).get(server.lower(), [])

    def processes(self) -> list:
        from beamline import procs

        return procs.find_processes(self.run_dir)


@contextlib.contextmanager
def running_beamline(run_dir: Path, *, hooks: bool = False) -> Iterator[BeamlineRun]:
    """The demo beamline up for the block, with TANGO_HOST pointing at it (and
    the servers' test hooks with ``hooks``); down after it, and checked that
    no process is left."""
    run = BeamlineRun(run_dir)
    env = run.env()
    if hooks:
        env["BEAMLINE_TEST_HOOKS"] = "1"
    try:
        run.up(env=env)
    except Exception:
        run.cli("down", check=False)
        raise
    os.environ["TANGO_HOST"] = run.tango_host
    try:
        yield run
    except BaseException:  # the set-up after `up` failed: stop it all the same
        os.environ.pop("TANGO_HOST", None)
        run.cli("down", check=False)
        raise
    os.environ.pop("TANGO_HOST", None)
    run.down()
    left = run.processes()
    assert left == [], f"processes left after beamline down: {left}"
