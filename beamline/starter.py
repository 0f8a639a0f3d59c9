"""Driving Tango's real Starter (``/usr/lib/tango/Starter``, device
``tango/admin/<host>``): registration, start, DevStart/DevStop, its view of
the servers.

The Starter recognises a server's process by the executable name and the
instance in its command line, so every server executable is named after its
Tango server (``Motor slit_h``) and lives in StartDsPath (the venv's bin).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from beamline import procs
from beamline.config import short_hostname

STARTER_BIN = Path(os.environ.get("BEAMLINE_STARTER_BIN", "/usr/lib/tango/Starter"))


class StarterError(Exception):
    pass


@dataclass(frozen=True)
class ServerStatus:
    """One line of the Starter's ``Servers`` attribute."""

    name: str
    state: str  # ON (answers), MOVING (process alive, not answering), FAULT (no process)
    controlled: bool
    level: int

    @classmethod
    def parse(cls, line: str) -> ServerStatus:
        parts = line.split("\t")
        name, state = parts[0], parts[1] if len(parts) > 1 else "UNKNOWN"
        controlled = len(parts) > 2 and parts[2] == "1"
        level = int(parts[3]) if len(parts) > 3 and parts[3].lstrip("-").isdigit() else 0
        return cls(name, state, controlled, level)


class Starter:
    def __init__(self, tango_host: str, host: str | None = None) -> None:
        self.tango_host = tango_host
        self.host = host or short_hostname()
        self.device = f"tango/admin/{self.host}"
        self.server = f"Starter/{self.host}"
        self._proxy = None
        self.last_error = ""  # why the last answers() was False

    @property
    def fqdn(self) -> str:
        return f"tango://{self.tango_host}/{self.device}"

    def register(self, start_ds_path: Path, log_home: Path) -> None:
        """Define the Starter device and the properties the suite relies on."""
        import tango

        from beamline.tangodb import database

        db = database(self.tango_host)
        try:
            info = db.get_device_info(self.device)
            exists = info.class_name == "Starter"
        except tango.DevFailed:
            exists = False
        if not exists:
            dev = tango.DbDevInfo()
            dev.name, dev._class, dev.server = self.device, "Starter", self.server
            db.add_device(dev)
        db.put_device_property(
            self.device,
            {
                "StartDsPath": [str(start_ds_path)],
                "LogFileHome": [str(log_home)],
                # Only one party may restart servers (see docs): never the Starter.
                "AutoRestartDuration": ["0"],
                # `beamline up` starts every level at once; the Starter's own
                # start-up sequence is one server after another, >= 4 s each.
                "StartServersAtStartup": ["false"],
            },
        )

    def start_process(self, env: dict[str, str], log: Path) -> int:
        if not STARTER_BIN.exists():
            raise StarterError(
                f"{STARTER_BIN} not found: install the Debian package tango-starter "
                "(make install does it)"
            )
        return procs.spawn_detached([str(STARTER_BIN), self.host], env, log)

    def proxy(self, timeout_ms: int = 3000):
        import tango

        if self._proxy is None:
            self._proxy = tango.DeviceProxy(self.fqdn)
            self._proxy.set_timeout_millis(timeout_ms)
        return self._proxy

    def answers(self) -> bool:
        import tango

        try:
            p = tango.DeviceProxy(self.fqdn)
            p.set_timeout_millis(1000)
            p.ping()
            return True
        except tango.DevFailed as exc:
            self.last_error = exc.args[0].desc.strip().splitlines()[0] if exc.args else str(exc)
            return False

    def wait_ready(self, timeout: float, pid: int | None = None, log: Path | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                return
            if pid is not None and not procs.alive(pid):
                detail = f"\n{procs.tail(log)}" if log else ""
                raise StarterError(f"the Starter (pid {pid}) exited during start-up{detail}")
            time.sleep(0.1)
        why = self.last_error
        detail = f"\n{procs.tail(log)}" if log else ""
        raise StarterError(
            f"the Starter {self.device} did not answer within {timeout:g} s"
            + (f" (last: {why})" if why else "")
            + detail
        )

    def update_servers_info(self) -> None:
        self.proxy().command_inout("UpdateServersInfo")

    def dev_start(self, server: str) -> bool:
        """Ask the Starter to start a server; False if it already runs."""
        import tango

        try:
            self.proxy().command_inout("DevStart", server)
            return True
        except tango.DevFailed as exc:
            if exc.args[0].reason == "ALREADY_RUNNING":
                return False
            raise StarterError(
                f"Starter refused to start {server}: {exc.args[0].desc.strip()}"
            ) from exc

    def start_server(self, server: str, running, timeout: float = 10.0) -> bool:
        """DevStart, insisting while the Starter has not yet noticed that the
        server died: it refuses with ALREADY_RUNNING until its own process
        scan (every 2-3 s) sees the process gone. ``running()`` tells whether a
        process really runs. Returns True if started, False if already running."""
        deadline = time.monotonic() + timeout
        while True:
            if self.dev_start(server):
                return True
            if running():
                return False
            if time.monotonic() >= deadline:
                raise StarterError(
                    f"the Starter still believes {server} is running although no such process "
                    f"exists, after {timeout:g} s"
                )
            time.sleep(0.2)

    def dev_stop(self, server: str) -> None:
        import tango

        try:
            self.proxy().command_inout("DevStop", server)
        except tango.DevFailed as exc:
            raise StarterError(
                f"Starter could not stop {server}: {exc.args[0].desc.strip()}"
            ) from exc

    def hard_kill(self, server: str) -> None:
        import tango

        try:
            self.proxy().command_inout("HardKillServer", server)
        except tango.DevFailed as exc:
            raise StarterError(
                f"Starter could not kill {server}: {exc.args[0].desc.strip()}"
            ) from exc

    def servers(self) -> dict[str, ServerStatus]:
        """The Starter's view, by lower-case server name."""
        value = self.proxy().read_attribute("Servers").value or ()
        out = {}
        for line in value:
            status = ServerStatus.parse(line)
            out[status.name.lower()] = status
        return out
