"""The supervisor's Tango side: probing devices, the Starter, the database.

- :class:`TangoProber`: one thread per device reads State with a short
  timeout several times a second and records when it last answered.
- :class:`StarterLauncher`: a ProcessLauncher that kills and stops through the
  host's Starter (HardKillServer, DevStop), falling back to signals.
- :func:`host_servers`: the servers of this host from the Starter (its
  ``Servers`` attribute: controlled servers and their levels) and their devices
  from the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import tango

from tango_devices.common.dbclient import KeptDatabase
from tango_devices.supervisor.model import ServerSpec, probed_devices
from tango_devices.supervisor.processes import ProcessLauncher

log = logging.getLogger(__name__)

EXCLUDED_SERVERS = ("Starter/", "DataBaseds/", "PyDatabaseds/")
MAX_RETRY = 1.0  # s between two attempts to reach a device that is not up
DEVICES_TTL = 60.0  # s a server's device list (from the database) is kept


class _Probe:
    """Asks one device its State several times a second, in its own thread.

    Each State is sent asynchronously and its answer awaited until the
    client's own timeout: the hang time (``timeout`` + ``confirm``) less the
    probe period, i.e. until the hang time has passed since the answer before
    it. Unanswered by then, the device is *silent since that last answer*
    (one period before the request, at most): a hang is seen the hang time
    after it began, however long the period, and a slow answer on a busy
    machine (up to the hang time less one period) is an answer. A failure to
    even reach the device because the database is down is no evidence either
    way. The timeout is set once, on a new client, before any call (changing
    it on a client reconnects, holding the GIL).

    Why this way (measured on this machine, a State of a local device):
    waiting with ``command_inout_reply(id, timeout)`` polls the reply every
    20 ms (282 us of CPU a probe, most of the supervisor's idle CPU at 400
    probes a second); a blocking ``command_inout_reply(id, 0)`` costs 76 us;
    a synchronous ``command_inout`` 23 us, but cppTango follows a timed-out
    synchronous call with reconnection attempts that each wait the timeout
    again (9 s instead of 3 before a stopped server was seen silent)."""

    def __init__(
        self,
        device: str,
        timeout: float,
        period: float,
        confirm: float,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.device = device
        self.on_change = on_change  # called when it falls silent or answers again
        self.timeout_ms = int(timeout * 1000)
        self.confirm_ms = int(max(confirm, timeout) * 1000)
        self.period = period
        self.lead = 0.0  # s the current client's timeout is short of the hang time
        self.answered = False  # has the current client had an answer?
        self.last_answer: float | None = None
        self.last_state = ""  # the State it answered last
        self.silent_since: float | None = None
        self.fresh_proxy = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"probe-{device}", daemon=True)
        self.thread.start()

    def _proxy(self):
        proxy = tango.DeviceProxy(self.device)
        # a request is sent one period after the answer before it: unanswered
        # by the hang time since that answer, it ends with a timeout (never
        # shorter than the probe's own timeout)
        self.lead = min(self.period, self.confirm_ms / 1000)
        self.answered = False
        proxy.set_timeout_millis(self.timeout_ms + self.confirm_ms - int(self.lead * 1000))
        return proxy

    def _silence_start(self, attempt: float) -> float:
        """When the device fell silent, given that the request sent at
        ``attempt`` is unanswered: at its last answer, if that was within one
        period of the request (the client's timeout assumed so); else (this
        client never had an answer) when the request was sent."""
        if self.last_answer is None or not self.answered:
            return attempt
        return max(self.last_answer, attempt - self.lead)

    def _run(self) -> None:
        with tango.EnsureOmniThread():
            proxy = None
            failures = 0
            while not self.stop.is_set():
                if self.fresh_proxy.is_set():
                    self.fresh_proxy.clear()
                    proxy, failures = None, 0
                attempt = time.monotonic()
                try:
                    if proxy is None:
                        proxy = self._proxy()
                    request = proxy.command_inout_asynch("State")
                except tango.DevFailed as exc:
                    proxy = None  # a new client at once (a failed one reconnects once a second)
                    if _about_the_database(exc):
                        self.silent_since = None  # nothing learnt about the device itself
                    else:  # its server does not take the connection: silent since now
                        self._silent(attempt)
                    # each new client asks the database first: a server that
                    # is not up yet is asked less and less often (up to
                    # MAX_RETRY), so that 200 of them starting do not flood
                    # a database they all need
                    failures += 1
                    self.stop.wait(min(self.period * 2 ** (failures - 1), MAX_RETRY))
                    continue
                failures = 0
                try:
                    state = proxy.command_inout_reply(request, 0)  # until the client's timeout
                except tango.DevFailed as exc:
                    if _timed_out(exc):  # reached its server, unanswered all the hang time
                        self._silent(self._silence_start(attempt))
                        continue  # ask again at once
                    # the connection broke: a new process, or none
                    proxy = None
                    self.stop.wait(min(self.period, 0.05))
                    continue
                news = self.silent_since is not None or self.last_answer is None
                self.last_state = str(state)
                self.last_answer = time.monotonic()
                self.answered = True
                self.silent_since = None
                if news:
                    self.on_change()
                self.stop.wait(self.period)

    def _silent(self, since: float) -> None:
        if self.silent_since is None:
            self.silent_since = since
            self.on_change()


def _reasons(exc: tango.DevFailed) -> str:
    return " ".join(f"{e.reason} {e.desc}" for e in exc.args)


def _about_the_database(exc: tango.DevFailed) -> bool:
    """A failure to build a client that comes from the database (down, busy,
    device unknown), not from the device's server."""
    text = _reasons(exc)
    return "sys/database" in text or "DbImportDevice" in text or "Database" in text


def _timed_out(exc: tango.DevFailed) -> bool:
    """The call reached the server and waited for an answer (the connection
    stays good), as opposed to a connection that is refused or broken."""
    text = _reasons(exc)
    return "CallTimedout" in text or "API_DeviceTimedOut" in text or "TimedOut" in text


class TangoProber:
    """Device liveness, as a client sees it (State reads with a short timeout,
    and a long one to confirm a silence)."""

    def __init__(
        self,
        timeout: float = 0.5,
        period: float = 0.2,
        confirm: float = 2.5,
        max_rate: float = 300.0,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.timeout = timeout
        self.on_change = on_change  # a device fell silent or answered (again): from its thread
        self.period = period
        self.confirm = confirm
        self.max_rate = max_rate
        self._probes: dict[str, _Probe] = {}

    def effective_period(self, devices: int) -> float:
        """s between two State reads of one device: ``period``, or longer when
        that would ask more than ``max_rate`` States a second in all (at 200
        devices, 0.2 s meant 1,000 reads a second: most of the supervisor's
        idle CPU, and a tenth of each device server's). A hang is still seen
        the hang time after the device's last answer (see :class:`_Probe`); a
        longer period leaves a slow answer less of the hang time."""
        return max(self.period, devices / max(self.max_rate, 1e-3))

    def watch(self, devices: Iterable[str]) -> None:
        wanted = {d.lower(): d for d in devices}
        for key in list(self._probes):
            if key not in wanted:
                self._probes.pop(key).stop.set()
        period = self.effective_period(len(wanted))
        for key, device in wanted.items():
            if key not in self._probes:
                self._probes[key] = _Probe(
                    device, self.timeout, period, self.confirm, self.on_change
                )
        for probe in self._probes.values():
            probe.period = period

    def last_answer(self, device: str) -> float | None:
        probe = self._probes.get(device.lower())
        return probe.last_answer if probe else None

    def silent_since(self, device: str) -> float | None:
        probe = self._probes.get(device.lower())
        return probe.silent_since if probe else None

    def answers(self) -> dict[str, tuple[str, float | None]]:
        """Every probed device: (the State it answered last, when: monotonic)."""
        # a copy first: ProbeAnswers reads this from a Tango thread while the
        # loop may add or drop probes (list() of a dict's values is atomic)
        return {p.device: (p.last_state, p.last_answer) for p in list(self._probes.values())}

    def reconnect(self, devices: Iterable[str]) -> None:
        for device in devices:
            probe = self._probes.get(device.lower())
            if probe:
                probe.fresh_proxy.set()

    def close(self) -> None:
        self.watch([])


class DatabaseCheck:
    """Does the Tango database answer? Asked at most every ``period`` s."""

    def __init__(self, period: float = 0.5, timeout: float = 1.0) -> None:
        self.period = period
        self.timeout_ms = int(timeout * 1000)
        self._checked = -1e9
        self._ok = True
        self._db = KeptDatabase(self.timeout_ms)

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._checked < self.period:
            return self._ok
        self._checked = now
        try:
            self._db(lambda db: db.get_info())
            self._ok = True
        except (tango.DevFailed, RuntimeError):
            self._ok = False
        return self._ok


class Starter:
    """The host's Tango Starter (``tango/admin/<host>``), with short timeouts."""

    def __init__(self, host: str) -> None:
        self.device = f"tango/admin/{host}"
        self._proxy = None

    def proxy(self):
        if self._proxy is None:
            self._proxy = tango.DeviceProxy(self.device)
            self._proxy.set_timeout_millis(2000)
        return self._proxy

    def command(self, name: str, server: str) -> bool:
        try:
            self.proxy().command_inout(name, server)
            return True
        except tango.DevFailed as exc:
            log.info("Starter %s(%s) refused: %s", name, server, exc.args[0].desc.strip())
            self._proxy = None
            return False

    def servers(self) -> list[tuple[str, bool, int]]:
        """(server, controlled, level) for every server the Starter lists."""
        lines = self.proxy().read_attribute("Servers").value or ()
        out = []
        for line in lines:
            parts = line.split("\t")
            controlled = len(parts) > 2 and parts[2] == "1"
            level = int(parts[3]) if len(parts) > 3 and parts[3].lstrip("-").isdigit() else 0
            out.append((parts[0], controlled, level))
        return out

    def properties(self) -> tuple[list[str], str]:
        """StartDsPath and LogFileHome, from the database."""
        db = tango.Database()
        props = db.get_device_property(self.device, ["StartDsPath", "LogFileHome"])
        return list(props["StartDsPath"]), (list(props["LogFileHome"]) or ["/var/tmp"])[0]


class StarterLauncher(ProcessLauncher):
    """Launch like the Starter; kill and stop through it, signals as a fallback.

    The Starter's StartDsPath and log directory come from the database, read
    when the supervisor starts (``preload``) and kept: a restart must not need
    the database for them."""

    def __init__(self, starter: Starter, database_ready=None) -> None:
        self.starter = starter
        self._paths: tuple[list[str], str] | None = None
        self._database_ready = database_ready or DatabaseCheck()
        super().__init__(lambda: self._props()[0], lambda: self._props()[1])

    def preload(self) -> None:
        try:
            self._props()
        except tango.DevFailed as exc:
            log.warning("cannot read the Starter's properties yet: %s", exc.args[0].desc.strip())

    def _props(self) -> tuple[list[str], str]:
        if self._paths is None:
            self._paths = self.starter.properties()
        return self._paths

    def database_ready(self) -> bool:
        return self._database_ready()

    def kill(self, spec: ServerSpec, pid: int) -> None:
        if not self.starter.command("HardKillServer", spec.name):
            super().kill(spec, pid)

    def stop(self, spec: ServerSpec, pid: int) -> None:
        if not self.starter.command("DevStop", spec.name):
            super().stop(spec, pid)


class DeviceLists:
    """Each server's (device, class) pairs from the database, kept
    :data:`DEVICES_TTL` s: the server list is read every few seconds, and
    asking the database for every server's devices each time was 40 requests
    a second at 200 servers."""

    def __init__(self, ttl: float = DEVICES_TTL, clock=time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lists: dict[str, tuple[float, list[tuple[str, str]]]] = {}
        self._db = KeptDatabase()

    def pairs(self, server: str) -> list[tuple[str, str]]:
        now = self._clock()
        kept = self._lists.get(server.lower())
        if kept is not None and now - kept[0] < self.ttl:
            return kept[1]
        classes = list(self._db(lambda db: db.get_device_class_list(server)))
        pairs = list(zip(classes[::2], classes[1::2], strict=False))
        if any(c != "DServer" for _d, c in pairs):  # not yet registered: asked again next time
            self._lists[server.lower()] = (now, pairs)
        return pairs


def host_servers(
    starter: Starter, own: str, only: Iterable[str] = (), lists: DeviceLists | None = None
) -> list[ServerSpec]:
    """The controlled servers of this host with their devices (not ``own``)."""
    lists = lists or DeviceLists(ttl=0.0)
    only_lower = {o.lower() for o in only}
    specs = []
    for name, controlled, level in starter.servers():
        if not controlled or name.lower() == own.lower() or name.startswith(EXCLUDED_SERVERS):
            continue
        if only_lower and name.lower() not in only_lower:
            continue
        devices = probed_devices(lists.pairs(name))
        if devices:
            specs.append(ServerSpec(name, devices, level))
    return specs
