"""Channel Access set-up shared by the EPICS drivers, and the channels they use.

pyepics loads libca once per process and libca reads its environment
(``EPICS_CA_ADDR_LIST``, ...) once, when its context is created. So:

- :func:`configure` sets the address list in ``os.environ`` *before* libca
  is initialised, and refuses a different list afterwards;
- ``epics`` is imported lazily (in :func:`ca_module`), never at module import.

libca also wants a CA repeater on the host (it forwards the IOCs' beacons)
and, when there is none, forks the process to run ``caRepeater`` from PATH
(printing "caRepeater couldn't be located" when it is not there, or leaving a
daemon behind when it is). Before initialising libca this module therefore
starts a minimal repeater of its own, in a thread, on 127.0.0.1 only (see
:class:`LoopbackRepeater`) when the repeater port is free: libca then finds
a repeater and spawns nothing.

:class:`Channels` is the set of PVs of one driver: created together, watched
together (monitored values cached, or explicit reads), and re-created by
themselves after a disconnection, because libca alone waits up to 10 s (its
"disconnect governor") and then backs off before searching again.

No ``tango`` import; no dependency on the simulators.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tango_devices.drivers.errors import ControllerRejected, DriverError, LinkError

ADDR_LIST = "EPICS_CA_ADDR_LIST"
AUTO_ADDR_LIST = "EPICS_CA_AUTO_ADDR_LIST"
REPEATER_PORT = "EPICS_CA_REPEATER_PORT"
DEFAULT_REPEATER_PORT = 5065

#: EPICS alarm severities and statuses, by number
ALARM_SEVERITIES = ("NO_ALARM", "MINOR", "MAJOR", "INVALID")
ALARM_STATUSES = (
    "NO_ALARM",
    "READ",
    "WRITE",
    "HIHI",
    "HIGH",
    "LOLO",
    "LOW",
    "STATE",
    "COS",
    "COMM",
    "TIMEOUT",
    "HWLIMIT",
    "CALC",
    "SCAN",
    "LINK",
    "SOFT",
    "BAD_SUB",
    "UDF",
    "DISABLE",
    "SIMM",
    "READ_ACCESS",
    "WRITE_ACCESS",
)

#: first re-creation of disconnected channels, then doubling up to the maximum
RESEARCH_FIRST = 1.0
RESEARCH_MAX = 4.0

_lock = threading.RLock()
_repeater: LoopbackRepeater | None = None

#: Held around every creation and clearing of a channel in this process, and
#: never in a libca callback. pyepics keeps its channels in two caches (by
#: name, and by libca's channel id, which is a pointer libca reuses at once);
#: clearing one channel while another thread creates one could pair a new
#: channel with a dead cache entry (seen: a restarted gauge whose STAT channel
#: never connected again; a stress test got a PV whose name read as freed
#: memory, then a segfault).
_LIFECYCLE = threading.RLock()
#: names of the channels this process's Channels have created and not cleared
_LIVE: Counter[str] = Counter()

log = logging.getLogger(__name__)


class ChannelAccessConfigError(DriverError):
    """The process's Channel Access set-up cannot be what a driver asks for."""


# ---------------------------------------------------------------- set-up
def libca_initialised() -> bool:
    """True once pyepics has loaded libca and created its context."""
    ca = sys.modules.get("epics.ca")
    return ca is not None and getattr(ca, "libca", None) is not None


def configure(addr_list: str | None) -> None:
    """Point Channel Access at ``addr_list`` (``"127.0.0.1:5071"``, several
    separated by spaces) with ``EPICS_CA_AUTO_ADDR_LIST=NO``; ``None`` keeps the
    process environment as it is.

    Must come before libca is initialised (the first channel a driver
    creates). Raises :class:`ChannelAccessConfigError` if libca already runs
    with another address list: every EPICS driver of a process shares one.
    """
    if addr_list is None:
        return
    wanted = " ".join(addr_list.split())
    if not wanted:
        raise ValueError("addr_list: empty; give host:port entries or None for the environment")
    with _lock:
        if libca_initialised():
            current = " ".join(os.environ.get(ADDR_LIST, "").split())
            if current == wanted and os.environ.get(AUTO_ADDR_LIST, "").upper() == "NO":
                return
            raise ChannelAccessConfigError(
                f"Channel Access already runs in this process with {ADDR_LIST}={current!r} "
                f"({AUTO_ADDR_LIST}={os.environ.get(AUTO_ADDR_LIST, 'YES')}), cannot switch to "
                f"{wanted!r}: give every EPICS device of one server the same address list, "
                "or run them in separate servers"
            )
        os.environ[ADDR_LIST] = wanted
        os.environ[AUTO_ADDR_LIST] = "NO"


def ca_module() -> Any:
    """``epics.ca`` with libca initialised (the repeater started first) and
    its context attached to the calling thread (pyepics' low-level calls in
    a thread without it see no channels)."""
    with _lock:
        import epics.ca as ca  # lazily: libca reads os.environ when initialised

        if ca.libca is None:
            _start_repeater()
            ca.initialize_libca()
    if ca.current_context() is None:
        ca.use_initial_context()
    return ca


def repeater_running() -> bool:
    """True if this process runs the loopback repeater."""
    return _repeater is not None


def _start_repeater() -> None:
    global _repeater
    if _repeater is not None:
        return
    try:
        port = int(os.environ.get(REPEATER_PORT, DEFAULT_REPEATER_PORT))
    except ValueError:
        return  # libca reports the bad variable itself
    _repeater = LoopbackRepeater.start(port)


# -------------------------------------------------------------- repeater
_HEADER = struct.Struct(">HHHHII")
_REPEATER_REGISTER = 24
_REPEATER_CONFIRM = 17


class LoopbackRepeater:
    """A minimal CA repeater bound to 127.0.0.1 only.

    Clients on this host register (``REPEATER_REGISTER``) and are confirmed;
    every other datagram (an IOC's beacon) is forwarded to every registered
    client. Clients that have gone are dropped at each registration (their
    port can be bound again), as ``caRepeater`` does. Only the first process
    on the host gets the port; the others register with it.
    """

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._clients: set[tuple[str, int]] = set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="ca-repeater", daemon=True)

    @classmethod
    def start(cls, port: int) -> LoopbackRepeater | None:
        """Start on 127.0.0.1:``port``; None if the port is taken (a repeater runs)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            return None
        repeater = cls(sock)
        repeater._thread.start()
        return repeater

    @property
    def clients(self) -> int:
        return len(self._clients)

    def close(self) -> None:
        """Stop the thread and free the port (a process's own repeater normally
        lives as long as the process)."""
        self._stopping = True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
            waker.sendto(b"", self._sock.getsockname())
        self._thread.join(timeout=2.0)
        self._sock.close()

    def _run(self) -> None:
        while not self._stopping:
            try:
                data, peer = self._sock.recvfrom(65536)
            except OSError:
                return
            if self._stopping:
                return
            if len(data) >= _HEADER.size and _HEADER.unpack_from(data)[0] == _REPEATER_REGISTER:
                self._register(peer)
            elif peer not in self._clients:
                for client in list(self._clients):
                    with contextlib.suppress(OSError):
                        self._sock.sendto(data, client)

    def _register(self, peer: tuple[str, int]) -> None:
        if not ipaddress.ip_address(peer[0]).is_loopback:
            return
        self._clients = {c for c in self._clients if c == peer or _port_in_use(c[1])}
        self._clients.add(peer)
        address = int(ipaddress.IPv4Address(peer[0]))
        with contextlib.suppress(OSError):
            self._sock.sendto(_HEADER.pack(_REPEATER_CONFIRM, 0, 0, 0, 0, address), peer)


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


# -------------------------------------------------------------- channels
@dataclass
class _Slot:
    """One PV of a :class:`Channels` set: its pyepics PV and what its callbacks saw."""

    name: str
    pv: Any = None
    connected: bool = False
    has_value: bool = False
    value: Any = None
    severity: int = 0
    status: int = 0


class Channels:
    """The PVs of one driver.

    ``monitor=True`` subscribes to every PV and caches what arrives (read with
    :meth:`value` and :meth:`alarm`); otherwise :meth:`read` asks the IOC.
    ``on_change`` is called (no arguments, from a pyepics thread, no lock
    held) on every value or connection change.

    Thread-safe. Never holds its lock while calling into libca (a libca
    callback waiting for the lock while libca waits for the callback would
    deadlock).
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        monitor: bool,
        on_change: Callable[[], None] | None = None,
    ):
        self.names = tuple(names)
        self.monitor = monitor
        self._on_change = on_change
        self._cond = threading.Condition(threading.Lock())
        self._slots: dict[str, _Slot] = {}
        self._open = False
        self._timer: threading.Timer | None = None
        self._delay = RESEARCH_FIRST

    # ------------------------------------------------------------ life
    def open(self) -> None:
        """Create the channels that are missing or disconnected: a fresh
        search for each (the connected ones are kept). From then on, channels
        that stay disconnected are re-created every 1, 2, 4, 4, ... s."""
        with self._cond:
            self._delay = RESEARCH_FIRST
            self._open = True
        self._create_missing()
        self._schedule(RESEARCH_FIRST)

    def _create_missing(self) -> None:
        """Re-create the channels not ready (nothing once closed)."""
        ca = ca_module()
        epics_pv = sys.modules["epics.pv"]
        with self._cond:
            if not self._open:
                return  # closed meanwhile: a late re-search creates nothing
            todo = [n for n in self.names if not self._ready(self._slots.get(n))]
            stale = [self._slots.pop(n) for n in todo if n in self._slots]
            fresh = {n: _Slot(n) for n in todo}
            self._slots.update(fresh)
        _destroy(stale)
        for slot in fresh.values():
            with _LIFECYCLE:
                with self._cond:
                    if self._slots.get(slot.name) is not slot:
                        continue  # closed (or re-opened) meanwhile
                _forget_dead_entry(ca, slot.name)
                try:
                    pv = epics_pv.PV(
                        slot.name,
                        form="time",
                        auto_monitor=self.monitor,
                        callback=(lambda slot=slot, **kw: self._on_value(slot, kw)),
                        connection_callback=(lambda slot=slot, **kw: self._on_connection(slot, kw)),
                    )
                except Exception:  # pyepics on a libca error: the next re-search retries
                    log.exception("creating the channel %s failed", slot.name)
                    continue
                _LIVE[slot.name] += 1
            with self._cond:
                slot.pv = pv
                orphan = self._slots.get(slot.name) is not slot
            if orphan:  # closed (or re-opened) meanwhile
                _destroy([slot])

    def close(self) -> None:
        """Clear every channel (idempotent); no more callbacks after this."""
        with self._cond:
            self._open = False
            timer, self._timer = self._timer, None
            slots = list(self._slots.values())
            self._slots.clear()
            self._cond.notify_all()
        if timer is not None:
            timer.cancel()
        _destroy(slots)

    def wait(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` for every channel; the names still missing."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                missing = [n for n in self.names if not self._ready(self._slots.get(n))]
                remaining = deadline - time.monotonic()
                if not missing or remaining <= 0 or not self._open:
                    return missing
                self._cond.wait(remaining)

    @property
    def connected(self) -> bool:
        """Every channel connected right now (with a first value when monitored)."""
        with self._cond:
            return self._open and all(self._ready(self._slots.get(n)) for n in self.names)

    def _ready(self, slot: _Slot | None) -> bool:
        return (
            slot is not None
            and slot.pv is not None
            and slot.connected
            and (slot.has_value or not self.monitor)
        )

    # ------------------------------------------------------- callbacks
    def _on_connection(self, slot: _Slot, info: dict[str, Any]) -> None:
        conn = bool(info.get("conn"))
        with self._cond:
            if self._slots.get(slot.name) is not slot:
                return
            slot.connected = conn
            if not conn:
                slot.has_value = False
            self._cond.notify_all()
        if not conn:
            self._schedule(RESEARCH_FIRST)
        self._changed()

    def _on_value(self, slot: _Slot, info: dict[str, Any]) -> None:
        with self._cond:
            if self._slots.get(slot.name) is not slot:
                return
            slot.value = info.get("value")
            slot.severity = int(info.get("severity") or 0)
            slot.status = int(info.get("status") or 0)
            slot.has_value = True
            self._cond.notify_all()
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # ---------------------------------------------------- reconnecting
    def _schedule(self, delay: float) -> None:
        with self._cond:
            if not self._open or self._timer is not None:
                return
            timer = threading.Timer(delay, self._research)
            timer.daemon = True
            self._timer = timer
        timer.start()

    def _research(self) -> None:
        with self._cond:
            self._timer = None
            if not self._open:
                return
            if all(self._ready(self._slots.get(n)) for n in self.names):
                self._delay = RESEARCH_FIRST
                return
            self._delay = min(self._delay * 2, RESEARCH_MAX)
            delay = self._delay
        try:
            self._create_missing()  # fresh channels: libca searches for them at once
        finally:
            self._schedule(delay)

    # ------------------------------------------------------------ values
    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if not self._ready(slot):
            raise LinkError(f"{name} is disconnected (no Channel Access server answers for it)")
        assert slot is not None
        return slot

    def value(self, name: str) -> Any:
        """The last monitored value; :class:`LinkError` if the PV is disconnected."""
        with self._cond:
            return self._slot(name).value

    def alarm(self, name: str) -> tuple[int, int]:
        """The last monitored (severity, status) numbers."""
        with self._cond:
            slot = self._slot(name)
            return slot.severity, slot.status

    def enum_strings(self, name: str, timeout: float) -> tuple[str, ...]:
        """The state names of an enum PV (asked once to the IOC)."""
        with self._cond:
            pv = self._slot(name).pv
        ctrl = pv.get_ctrlvars(timeout=timeout, warn=False) or {}
        strings = ctrl.get("enum_strs")
        if not strings:
            raise LinkError(
                f"no reply from {name} within {timeout:g} s to a request for its states"
            )
        return tuple(strings)

    def read(self, names: Iterable[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Ask the IOC for the current value, severity and status of ``names``
        (requests pipelined: one round trip). :class:`LinkError` if one is
        disconnected or does not answer within ``timeout``."""
        ca = ca_module()
        with self._cond:
            pvs = {name: self._slot(name).pv for name in names}
        deadline = time.monotonic() + timeout
        ftypes = {}
        try:
            for name, pv in pvs.items():
                ftypes[name] = ca.promote_type(pv.chid, use_time=True)
                ca.get_with_metadata(pv.chid, ftype=ftypes[name], wait=False, timeout=timeout)
            _wait_for_gets(ca, pvs, ftypes, deadline)
            out = {}
            for name, pv in pvs.items():
                remaining = max(deadline - time.monotonic(), 0.001)
                reply = ca.get_complete_with_metadata(
                    pv.chid, ftype=ftypes[name], timeout=remaining
                )
                if reply is None:
                    raise LinkError(f"no reply from {name} within {timeout:g} s")
                out[name] = reply
            return out
        except _ca_errors(ca) as exc:
            raise LinkError(f"reading {', '.join(pvs)} failed: {exc}") from exc

    def put(self, name: str, value: Any, timeout: float) -> None:
        """Write ``value`` and wait (up to ``timeout``) until the IOC has processed it."""
        ca = ca_module()
        with self._cond:
            pv = self._slot(name).pv
        try:
            status = ca.put(pv.chid, value, wait=True, timeout=timeout)
        except _ca_errors(ca) as exc:
            if "access denied" in str(exc).lower():
                raise ControllerRejected(0, f"{name} is read-only", f"put {name}") from exc
            raise LinkError(f"writing {value!r} to {name} failed: {exc}") from exc
        if status is None or status < 0:
            raise LinkError(f"no completion from {name} within {timeout:g} s for {value!r}")


def _ca_errors(ca: Any) -> tuple[type[Exception], ...]:
    """pyepics' exception classes (they do not share a base class)."""
    names = ("ChannelAccessException", "ChannelAccessGetFailure", "CASeverityException")
    return tuple(getattr(ca, n) for n in names if hasattr(ca, n))


def _wait_for_gets(ca: Any, pvs: dict[str, Any], ftypes: dict[str, int], deadline: float) -> None:
    """Poll until every get issued has its reply (or the deadline), so that
    pyepics' ``get_complete`` never times out itself (it would warn)."""
    pending = getattr(ca, "GET_PENDING", None)
    if pending is None:
        return

    def waiting() -> bool:
        for name, pv in pvs.items():
            entry = ca.get_cache(pv.pvname)
            if entry is None or not hasattr(entry, "get_results"):
                return False  # not pyepics 3.5's layout: let get_complete wait
            if entry.get_results[ftypes[name]][0] is pending:
                return True
        return False

    while waiting():
        if time.monotonic() >= deadline:
            names = [n for n in pvs if ca.get_cache(pvs[n].pvname) is not None]
            raise LinkError(f"no reply from {', '.join(names)} before the timeout")
        ca.pend_event(3.0e-4)


#: (when, what): the callback objects of cleared channels, kept alive a while
_GRAVEYARD: list[tuple[float, Any]] = []
_GRAVEYARD_LOCK = threading.Lock()
GRAVEYARD_KEEP = 30.0  # s a cleared channel's callback objects outlive it


def _bury(*objects: Any) -> None:
    """Keep ``objects`` referenced for :data:`GRAVEYARD_KEEP` seconds, and let
    go of what was buried longer ago."""
    now = time.monotonic()
    with _GRAVEYARD_LOCK:
        _GRAVEYARD.extend((now, o) for o in objects if o is not None)
        while _GRAVEYARD and now - _GRAVEYARD[0][0] > GRAVEYARD_KEEP:
            _GRAVEYARD.pop(0)


def _no_monitor(*_args: Any, **_kwargs: Any) -> None:
    """A cleared PV's ``_check_auto_monitor``: it subscribes no more."""


def _destroy(slots: Iterable[_Slot]) -> None:
    """Clear the channels of ``slots`` (their callbacks first)."""
    named = [(s.name, s.pv) for s in slots if s.pv is not None]
    if not named:
        return
    ca = ca_module()
    for name, pv in named:
        with _LIFECYCLE:
            _clear(ca, name, pv)


def _clear(ca: Any, name: str, pv: Any) -> None:
    """Clear the channel ``name`` and forget it (held: ``_LIFECYCLE``)."""
    chid = pv.chid
    # libca clears the channel's subscriptions itself, under its own lock
    # (waiting for a callback in progress). pyepics's disconnect() would
    # clear the monitor from this thread while libca's thread may be
    # clearing and re-adding it for a connection event: a double free,
    # a segfault seen in a Valve starting beside a slow IOC. So the PV
    # forgets its monitor before disconnect(), and again after the channel
    # is gone (a connection callback in flight may have subscribed anew).
    # The monitor's callback objects stay referenced meanwhile, and a while
    # after: libca holds a raw pointer to them until the channel is
    # cleared, and a callback through a freed one runs whatever reused its
    # memory (seen: "suppress.__exit__() got an unexpected keyword argument
    # 'value'", then a segfault, in a Valve re-creating a channel).
    pv._check_auto_monitor = _no_monitor  # a connection callback adds none now
    before, pv._monref = pv._monref, None
    with contextlib.suppress(Exception):
        pv.disconnect()
    if chid is not None:
        with contextlib.suppress(Exception):
            ca.clear_channel(chid)
    after, pv._monref = pv._monref, None
    _bury(before, after)
    _LIVE[name] -= 1
    if _LIVE[name] <= 0:
        del _LIVE[name]
        _forget_dead_entry(ca, name)


def _forget_dead_entry(ca: Any, name: str) -> None:
    """Drop pyepics' cache entry for ``name`` when no channel of this process
    uses it any more, so that the next channel of that name is a new libca
    channel, never a cleared one found in the cache (held: ``_LIFECYCLE``)."""
    if _LIVE.get(name):
        return
    cache = getattr(ca, "_cache", None)
    if not isinstance(cache, dict):
        return  # not pyepics 3.5's layout
    context = ca.current_context()
    if context not in cache:
        return
    entry = cache[context].pop(name, None)
    chids = getattr(ca, "_chid_cache", None)
    if entry is None or not isinstance(chids, dict):
        return
    for key in [k for k, v in chids.items() if v is entry]:
        chids.pop(key, None)


def severity_name(severity: int) -> str:
    """``MAJOR`` for 2, ...; the number itself when unknown."""
    return ALARM_SEVERITIES[severity] if 0 <= severity < len(ALARM_SEVERITIES) else str(severity)


def status_name(status: int) -> str:
    """``HIHI`` for 3, ...; the number itself when unknown."""
    return ALARM_STATUSES[status] if 0 <= status < len(ALARM_STATUSES) else str(status)
