"""Start the virtual hardware (``beamline-sim``) as a real process for tests.

Plain functions and a context manager, no fixtures: a test module makes its
own fixture from :func:`running_simulator`. Never imported at runtime.
"""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import PROJECT, wait_until

START_TIMEOUT = 15.0


def axis(label: str, position: int = 2000, **overrides: Any) -> dict[str, Any]:
    """One SMC axis config (steps): switches at -500 / 20000, home switch at 0."""
    cfg = {
        "label": label,
        "position": position,
        "low_switch": -500,
        "high_switch": 20000,
        "home_switch": 0,
        "home_position": 0,
        "velocity": 2000,
        "max_velocity": 10000,
        "acceleration_time": 0.1,
    }
    cfg.update(overrides)
    return cfg


SMC_CONFIG: dict[str, Any] = {
    "control": {"port": 0},
    "controllers": {
        "mc1": {
            "kind": "smc",
            "port": 0,
            "axes": {"1": axis("slit_h"), "2": axis("slit_v", velocity=10000)},
        }
    },
    "overrides": {"bl01/mot/slit_h": {"Port": "socket://{listen}:{mc1.port}"}},
}


def default_config() -> dict[str, Any]:
    return copy.deepcopy(SMC_CONFIG)


def sim_command(config_file: Path, state_file: Path, *extra: str) -> list[str]:
    """The command line, independent of PATH (``python -m tango_devices.simulators``)."""
    return [
        sys.executable,
        "-m",
        "tango_devices.simulators",
        "--config",
        str(config_file),
        "--state-file",
        str(state_file),
        *extra,
    ]


class SimProcess:
    """A running ``beamline-sim`` and the ways to talk to it."""

    def __init__(self, workdir: Path, config: dict[str, Any], *extra: str):
        self.workdir = Path(workdir)
        self.config_file = self.workdir / "simulation.json"
        self.state_file = self.workdir / "sim-state.json"
        self.log_file = self.workdir / "sim.log"
        self.config_file.write_text(json.dumps(config, indent=2))
        with open(self.log_file, "wb") as log:
            self.proc = subprocess.Popen(
                sim_command(self.config_file, self.state_file, *extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT,
            )
        self.state: dict[str, Any] = {}

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Poll for the state file this process wrote; fail early if it died."""

        def ready() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"beamline-sim exited {self.proc.returncode}:\n{self.log()}")
            try:
                state = json.loads(self.state_file.read_text())
            except (OSError, ValueError):
                return None
            return state if state.get("pid") == self.proc.pid else None

        self.state = wait_until(ready, timeout, "the simulator's state file")
        return self.state

    def url(self, controller: str = "mc1") -> str:
        """pyserial URL of a controller's port."""
        port = self.state["controllers"][controller]["port"]
        return f"socket://{self.state['listen']}:{port}"

    def control(self, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
        """One JSON request to the control port, its JSON reply."""
        address = (self.state["listen"], self.state["control_port"])
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall((json.dumps(request) + "\n").encode())
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        return json.loads(data)

    def fault(self, kind: str, controller: str = "mc1", **params: Any) -> dict[str, Any]:
        reply = self.control({"op": "fault", "controller": controller, "kind": kind, **params})
        assert reply["ok"], reply
        return reply

    def clear(self, controller: str = "mc1") -> dict[str, Any]:
        reply = self.control({"op": "clear", "controller": controller})
        assert reply["ok"], reply
        return reply

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Stop the process whatever its state (SIGTERM, then SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@contextlib.contextmanager
def running_simulator(
    workdir: Path, config: dict[str, Any] | None = None, *extra: str
) -> Iterator[SimProcess]:
    """A simulator on free ports (``--auto-ports``), ready; always killed on exit."""
    sim = SimProcess(
        workdir, config if config is not None else default_config(), "--auto-ports", *extra
    )
    try:
        sim.wait_ready()
        yield sim
    finally:
        sim.kill()


def poll_until_stopped(ctl: Any, axis: int, timeout: float = 10.0) -> tuple[int, Any]:
    """Poll ``?PS`` until the axis stops; returns the last (position, status)."""
    deadline = time.monotonic() + timeout
    while True:
        position, status = ctl.read_position_status(axis)
        if not status.moving:
            return position, status
        if time.monotonic() >= deadline:
            raise AssertionError(f"axis {axis} still moving after {timeout:g} s (at {position})")
        time.sleep(0.02)
