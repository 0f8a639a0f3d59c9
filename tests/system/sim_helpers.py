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


# ------------------------------------------- shutter PLC, scaler and camera
VACUUM_INTERLOCK_TEXT = "vacuum interlock: pressure above 1e-5 mbar at bl01/vac/gauge1"
PRESSURE_PER_STEP = 1e-8  # mbar per step of the "gauge" axis: 1000 steps = the 1e-5 threshold


def plc_scaler_camera_config() -> dict[str, Any]:
    """A shutter PLC, a scaler and a camera wired through the physics; the
    pressure comes from SMC axis mc1/1 (``PRESSURE_PER_STEP``), so a test
    raises it by moving that axis (position 100 = 1e-6 mbar)."""
    return {
        "control": {"port": 0},
        "controllers": {
            "mc1": {
                "kind": "smc",
                "port": 0,
                "axes": {"1": axis("gauge", position=100, velocity=10000)},
            },
            "plc1": {
                "kind": "plc",
                "port": 0,
                "shutters": {"fe": {"travel_time": 0.3, "open": False}},
                "interlocks": [
                    {
                        "name": "vacuum",
                        "input": "pressure",
                        "above": 1e-5,
                        "text": VACUUM_INTERLOCK_TEXT,
                    }
                ],
            },
            "scaler1": {
                "kind": "scaler",
                "port": 0,
                "channels": {"1": "i0", "2": "diode"},
                "max_preset": 3600,
            },
            "cam1": {
                "kind": "camera",
                "port": 0,
                "width": 512,
                "height": 512,
                "bits": 16,
                "readout_time": 0.005,
                "max_exposure": 60,
            },
        },
        "physics": {
            "inputs": {
                "pressure": {"source": "mc1/1", "scale": PRESSURE_PER_STEP},
                "shutter_open": {"source": "plc1/shutter_open"},
            }
        },
    }


def poll(read: Any, accept: Any, timeout: float = 5.0, what: str = "a condition") -> Any:
    """Call ``read()`` until ``accept(value)``; returns that value, or fails
    with the last one after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if accept(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}: last {value!r}"
            )
        time.sleep(0.01)


# ------------------------------------------------------------- EPICS IOC
import queue  # noqa: E402 - used by this section only
import threading  # noqa: E402


def ioc_config() -> dict[str, Any]:
    """A simulator with one EPICS IOC ``ioc1`` (prefix ``BL01:``): gauge1,
    valve1 and the motor record mirror_pitch (mrad, MRES 1e-4: 10000 steps/mrad)."""
    return {
        "control": {"port": 0},
        "controllers": {
            "ioc1": {
                "kind": "epics_ioc",
                "port": 0,
                "prefix": "BL01:",
                "gauges": {
                    "gauge1": {
                        "pv": "VAC:GAUGE1",
                        "base_pressure": 2e-8,
                        "leak_pressure": 1e-3,
                        "time_constant": 0.5,
                        "high": 1e-6,
                        "hihi": 1e-5,
                    }
                },
                "valves": {"valve1": {"pv": "VAC:VALVE1", "travel_time": 0.5, "open": True}},
                "motors": {
                    "mirror_pitch": {
                        "pv": "OPT:MIR:PITCH",
                        "egu": "mrad",
                        "mres": 0.0001,
                        "position": 3.0,
                        "low_switch": -1.0,
                        "high_switch": 8.0,
                        "home": 3.0,
                        "velocity": 0.5,
                        "max_velocity": 2.0,
                        "acceleration": 0.2,
                    }
                },
            }
        },
        "physics": {"inputs": {"mirror_pitch": {"source": "ioc1/mirror_pitch"}}},
    }


def ioc_address(sim: SimProcess, controller: str = "ioc1") -> str:
    """``host:port`` of an IOC, for EPICS_CA_ADDR_LIST."""
    return f"{sim.state['listen']}:{sim.state['controllers'][controller]['port']}"


class EpicsCallError(Exception):
    """A driver call in the EPICS client process failed: ``error`` is the
    exception's class name (``LinkError``, ``ControllerRejected``, ...)."""

    def __init__(self, error: str, message: str, code: int | None):
        super().__init__(f"{error}: {message}")
        self.error = error
        self.message = message
        self.code = code


class EpicsClient:
    """The pyepics drivers in a process of their own (``epics_client_script``):
    libca reads its environment once per process, and every test's IOC is on
    another port."""

    REPLY_TIMEOUT = 15.0

    def __init__(self, workdir: Path, addr_list: str):
        self.stderr_file = Path(workdir) / "epics-client.err"
        with open(self.stderr_file, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.system.epics_client_script", addr_list],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=PROJECT,
                text=True,
            )
        self._replies: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put("")

    def stderr(self) -> str:
        return self.stderr_file.read_text(errors="replace")

    def request(self, **request: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        try:
            line = self._replies.get(timeout=self.REPLY_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no reply to {request} within {self.REPLY_TIMEOUT:g} s") from None
        if not line:
            raise AssertionError(f"the EPICS client exited:\n{self.stderr()}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise EpicsCallError(reply["error"], reply["message"], reply["code"])
        return reply["result"]

    def new(self, name: str, cls: str, *args: Any, **kwargs: Any) -> None:
        self.request(op="new", name=name, cls=cls, args=list(args), kwargs=kwargs)

    def call(self, name: str, method: str, *args: Any) -> Any:
        return self.request(op="call", name=name, method=method, args=list(args))

    def attr(self, name: str, attr: str) -> Any:
        return self.request(op="attr", name=name, attr=attr)

    def close(self) -> None:
        """Ask the process to exit (closing its drivers); kill it if it does not."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def running_epics_client(workdir: Path, addr_list: str) -> Iterator[EpicsClient]:
    """An :class:`EpicsClient` pointed at ``addr_list``; always stopped on exit."""
    client = EpicsClient(workdir, addr_list)
    try:
        yield client
    finally:
        client.close()
