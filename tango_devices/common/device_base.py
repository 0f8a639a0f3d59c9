"""Tango-side helpers shared by every device server of the suite: one kernel.

- :class:`BeamlineDevice` holds the family's Tango-free logic (``self.logic``,
  which owns the family's :class:`StateMachine`), mirrors its state into
  ``DevState`` with State/Status events, answers every ``is_*_allowed`` from
  the family's table with one :meth:`BeamlineDevice.check` and one refusal
  text, publishes the table as ``CommandStates``, and turns refusals and
  hardware errors into DevFailed exceptions with a clear reason.
- :func:`component_command` and :func:`component_attribute` declare a command
  or a (writable) attribute that hands off to the logic, allowed where the
  table allows it, in one declaration.
- :func:`run_server` is the ``main()`` of every server: it registers a
  faulthandler on SIGUSR1 (a supervisor can dump the stacks of every thread of
  a hung server into its log) and runs the Tango server.
"""

from __future__ import annotations

import contextlib
import faulthandler
import inspect
import json
import logging
import numbers
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tango
from tango import AttrQuality, AttrWriteType, DevState
from tango.server import Device, attribute, command

from tango_devices.common import lifecycle
from tango_devices.common.component import Component, ComponentError
from tango_devices.common.statemachine import CommandRefused, State, StateMachine, StateTable
from tango_devices.relay import ports as event_ports

QUALITY = {
    "VALID": AttrQuality.ATTR_VALID,
    "CHANGING": AttrQuality.ATTR_CHANGING,
    "INVALID": AttrQuality.ATTR_INVALID,
    "ALARM": AttrQuality.ATTR_ALARM,
    "WARNING": AttrQuality.ATTR_WARNING,
}


def to_devstate(state: State) -> DevState:
    """The DevState a family's state shows as (its ``tango`` name)."""
    return getattr(DevState, state.tango)


def throw(reason: str, desc: str, origin: str) -> None:
    """Raise a DevFailed (never returns)."""
    tango.Except.throw_exception(reason, desc, origin)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


_parse_bool.__name__ = "boolean"

_CONVERTERS = {
    tango.CmdArgType.DevString: str,
    tango.CmdArgType.DevBoolean: _parse_bool,
    tango.CmdArgType.DevDouble: float,
    tango.CmdArgType.DevFloat: float,
    tango.CmdArgType.DevShort: int,
    tango.CmdArgType.DevUShort: int,
    tango.CmdArgType.DevLong: int,
    tango.CmdArgType.DevULong: int,
    tango.CmdArgType.DevLong64: int,
    tango.CmdArgType.DevULong64: int,
}


class BeamlineDevice(Device):
    """Base class: state mirroring, State events and error mapping."""

    @classmethod
    def class_properties_spec(cls) -> dict[str, dict]:
        """The device properties this class declares: type converter, mandatory, doc.

        Used by ``beamline config check`` to validate db_config against the code.
        """
        from tango.server import device_property

        spec: dict[str, dict] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, device_property):
                    spec[name] = {
                        "type": _CONVERTERS.get(value.dtype, str),
                        "mandatory": bool(value.mandatory),
                        "doc": value.doc or f"device property {name}",
                    }
        return spec

    #: attributes whose change events the kernel pushes: their values are
    #: compared after every observation of the hardware and every write through
    #: :func:`component_attribute`, and pushed when they changed, so that clients
    #: (the data logger, Taurus) subscribe to them instead of reading them every
    #: second. (CommandStates, which never changes, is announced for every device.)
    EVENTED: tuple[str, ...] = ()

    #: the family's Tango-free logic (motor logic, queue logic, ...): owns the
    #: state machine; None while the device is not configured
    logic: Any = None
    _machine: StateMachine | None = None

    def init_state_events(self, machine: StateMachine, listen: bool = True) -> None:
        """Mirror ``machine`` into the Tango state and answer is_*_allowed and
        CommandStates from its table. State/Status events are pushed the moment
        the state changes (``listen``), or when the device calls
        :meth:`mirror_state` itself (a logic that reports its changes through
        its own listener)."""
        self._machine = machine
        self._mirrored: tuple[DevState, str] | None = None
        self.set_change_event("State", True, False)
        self.set_change_event("Status", True, False)
        if listen:
            machine.add_listener(self.mirror_state)

    def tango_state(self) -> tuple[DevState, str]:
        """The DevState and Status to show now (a family may add to what its
        state machine says, e.g. ALARM while something blocks it)."""
        return to_devstate(self._machine.state), self._machine.status

    def mirror_state(self, *_change) -> None:
        """StateMachine listener (any thread): copy the *current* state into
        Tango and push events. Runs under the device monitor, so mirrors from
        several threads are serialised and the last one shows the latest state."""
        with tango.AutoTangoMonitor(self):
            devstate, status = self.tango_state()
            if (devstate, status) == self._mirrored:
                return
            state_changed = self._mirrored is None or self._mirrored[0] != devstate
            self._mirrored = (devstate, status)
            self.set_state(devstate)
            self.set_status(status)
            try:
                if state_changed:
                    self.push_change_event("State", devstate)
                self.push_change_event("Status", status)
            except tango.DevFailed as exc:
                self.warn_stream(f"could not push State event: {exc.args[0].desc}")

    @attribute(
        dtype=str,
        description="JSON: every command (and write_<Attribute>) of the device's state table "
        "with the states that allow it. Clients (the GUI) enable their buttons from it.",
    )
    def CommandStates(self) -> str:
        if self._machine is None:
            return "{}"
        return json.dumps(self._machine.table.command_states())

    def refuse(self, exc: Exception, origin: str) -> None:
        """Turn a logic-layer refusal into a DevFailed that names the problem."""
        if isinstance(exc, CommandRefused):
            throw("API_CommandNotAllowed", str(exc), origin)
        throw(f"{type(self).__name__.upper()}_ERROR", str(exc), origin)

    # ------------------------------------------------ logic plumbing
    def init_device(self) -> None:
        super().init_device()
        self._last_pushed: dict[str, tuple[Any, AttrQuality]] = {}
        self._evented_seen: dict[str, Any] = {}
        # the table never changes: a subscriber gets it once, and never reads it again
        self.set_change_event("CommandStates", True, False)
        for name in type(self).EVENTED:
            self.set_change_event(name, True, False)
        lifecycle.clear_exit_marker(_server_name())
        if lifecycle.test_hooks_enabled() and not getattr(self, "_hooks_added", False):
            self._hooks_added = True
            self.add_command(command(f=_test_crash, dtype_in=str, doc_in=_test_crash.__doc__))
            self.add_command(command(f=_test_hang, dtype_in=float, doc_in=_test_hang.__doc__))

    def delete_device(self) -> None:
        """Shutdown (DevStop, SIGTERM) or Init: stop the logic; a shutdown
        leaves a clean-exit marker (an Init removes it again in init_device)."""
        lifecycle.mark_clean_exit(_server_name())
        self.stop_logic()

    def misconfigured(self, text: str) -> None:
        """No logic: FAULT with a Status that says what to fix."""
        self.logic = None
        self._machine = None
        self.set_state(DevState.FAULT)
        self.set_status(f"{text}. Fix the device properties, then run Init.")

    def start_logic(self, make: Callable[[], Component], wait: float = 1.0) -> bool:
        """Create a hardware family's logic, mirror its state, start polling.

        ``make`` raises ComponentError for a bad configuration: the device then
        stays in FAULT with a Status that says what to fix. Waits up to ``wait``
        seconds for a first observation, so the first State read is real, but
        never blocks the server start on unreachable hardware.
        """
        self.logic = None
        try:
            logic = make()
        except ComponentError as exc:
            self.misconfigured(str(exc))
            return False
        self.restore_settings(logic)
        self.logic = logic
        self.init_state_events(logic.machine)
        self.set_status(logic.status)
        if type(self).EVENTED:
            logic.add_observation_listener(self.publish_changes)
        logic.start_polling()
        logic.wait_until_known(wait)
        return True

    def stop_logic(self) -> None:
        if isinstance(self.logic, Component):
            self.logic.stop_polling()
            self.logic = None

    def need_logic(self, origin: str) -> Any:
        """The logic, or a DevFailed saying why there is none."""
        if self.logic is None:
            throw(f"{type(self).__name__.upper()}_NOT_CONFIGURED", self.get_status(), origin)
        return self.logic

    def run(self, origin: str, fn, *args):
        """Run a logic call; refusals and hardware errors become DevFailed."""
        try:
            return fn(*args)
        except (CommandRefused, ComponentError) as exc:
            self.refuse(exc, origin)

    def check(self, what: str) -> bool:
        """Every is_*_allowed: refuse with the state, the cause and the states
        that allow ``what`` (one text for every family)."""
        machine = self._machine
        if machine is None or self.logic is None:
            throw(f"{type(self).__name__.upper()}_NOT_CONFIGURED", self.get_status(), what)
        try:
            machine.check(what)
        except CommandRefused as exc:
            throw("API_CommandNotAllowed", str(exc), f"{type(self).__name__}.{what}")
        return True

    def check_write(self, req_type, what: str) -> bool:
        """is_<Attr>_allowed for a writable attribute: reads always allowed."""
        if req_type == tango.AttReqType.READ_REQ:
            return True
        return self.check(what)

    def value_or_fail(self, value, name: str):
        """A reading, or a DevFailed saying why it is not known yet."""
        if value is None:
            throw("VALUE_NOT_KNOWN", f"{name} is not known yet: {self.get_status()}", name)
        return value

    # ------------------------------------------------ settings kept in the database
    def persist(self, name: str, value: Any, undo: Callable[[], Any], origin: str) -> None:
        """Store setting ``name`` = ``value`` (applied a moment ago) in the Tango
        database where Tango keeps a memorized attribute's value. If it cannot
        be stored (database down, disk full, access refused) the change is
        undone with ``undo`` and refused: a setting is either stored and
        applied, or refused and unchanged."""
        try:
            db = tango.Util.instance().get_database()
            db.put_device_attribute_property(self.get_name(), {name: {"__value": _stored(value)}})
        except (tango.DevFailed, RuntimeError) as exc:
            cause = exc.args[0].desc.strip() if isinstance(exc, tango.DevFailed) else str(exc)
            cause = cause.splitlines()[0] if cause else type(exc).__name__
            try:
                undo()
                kept = f"nothing changed ({name} is as before)"
            except Exception as undo_exc:  # noqa: BLE001 - reported to the client
                kept = f"and putting the old {name} back failed too: {undo_exc}"
            throw(
                "SETTING_NOT_STORED",
                f"{name} = {value!r} refused: the Tango database did not store it ({cause}); "
                f"{kept}. Check the database (beamline status) and write it again.",
                origin,
            )

    @classmethod
    def settings(cls) -> dict[str, Any]:
        """The attributes declared with ``persist``: name -> attribute."""
        attrs = cls.TangoClassClass.attr_list
        return {n: a for n, a in attrs.items() if getattr(a, "beamline_setting", None)}

    def restore_settings(self, logic: Any) -> None:
        """Apply the stored settings to a new logic (before it polls), through its
        own setters (they check them), and show them as the attributes' set
        values. A stored value the logic refuses is left out, with a warning."""
        settings = type(self).settings()
        if not settings:
            return
        db = tango.Util.instance().get_database()
        stored = db.get_device_attribute_property(self.get_name(), list(settings))
        for name, attr in settings.items():
            raw = list(stored.get(name, {}).get("__value", []))
            if not raw:
                continue
            try:
                value = _restored(raw, attr)
                getattr(logic, attr.beamline_setting)(value)
            except Exception as exc:  # noqa: BLE001 - a bad stored value must not stop the start
                self.warn_stream(f"the stored {name} {raw} was not applied: {exc}")
                continue
            with contextlib.suppress(tango.DevFailed, RuntimeError):
                self.get_device_attr().get_w_attr_by_name(name).set_write_value(value)

    def push(self, attr: str, value, quality=AttrQuality.ATTR_VALID) -> None:
        """Push a change event, never failing the caller."""
        self.push_at(attr, value, time.time(), quality)

    def push_at(self, attr: str, value, when: float, quality=AttrQuality.ATTR_VALID) -> None:
        """Push a change event stamped ``when``, never failing the caller; the
        value is kept for :meth:`RepublishEvents`."""
        self._last_pushed[attr] = (value, quality)
        try:
            self.push_change_event(attr, value, when, quality)
        except tango.DevFailed as exc:
            self.debug_stream(f"could not push {attr}: {exc.args[0].desc}")

    def publish_changes(self) -> None:
        """Push a change event for each of :attr:`EVENTED` whose value changed
        since it was last pushed (any thread; values not known yet are left
        for later). Runs after every observation and every write; the device
        monitor is taken only when something changed."""
        names = type(self).EVENTED
        if not names or self.logic is None:
            return
        klass = type(self)
        changed = []
        for name in names:
            try:
                value = inspect.getattr_static(klass, name).fget(self)
            except Exception:  # noqa: BLE001 - not known yet; a reader sees why
                continue
            quality = AttrQuality.ATTR_VALID
            if isinstance(value, tuple) and len(value) == 3:  # (value, time, quality)
                value, _, quality = value
            seen = (_comparable(value), quality)
            if self._evented_seen.get(name) != seen:
                changed.append((name, value, quality, seen))
        if not changed:
            return
        with tango.AutoTangoMonitor(self):
            for name, value, quality, seen in changed:
                self._evented_seen[name] = seen
                self.push_at(name, value, time.time(), quality)

    def is_RepublishEvents_allowed(self) -> bool:
        return True  # harmless in every state: a kernel command, in no family's table

    @command(
        dtype_out=int,
        doc_out="how many attributes' events were pushed",
    )
    def RepublishEvents(self) -> int:
        """Push State, Status and every attribute this device pushes events for,
        with its current value, to whoever subscribed. The event relay calls it
        once it has re-created a restarted server's subscriptions: what the new
        process published before then reached nobody, and its clients must see
        what changed while it was down (docs/events.md)."""
        n = 0
        with tango.AutoTangoMonitor(self):
            self._mirrored = None  # State and Status again, even if unchanged
        if self._machine is not None:
            self.mirror_state()
            n += 2
        for attr, (value, quality) in list(self._last_pushed.items()):
            try:
                self.push_change_event(attr, value, time.time(), quality)
                n += 1
            except tango.DevFailed as exc:
                self.debug_stream(f"could not push {attr} again: {exc.args[0].desc}")
        return n


def component_command(name: str, method: str, doc: str):
    """A Tango command ``name`` that runs the logic's ``method`` and is
    allowed in the states the family's table allows for ``name``."""

    def run_command(self):
        self.run(name, getattr(self.need_logic(name), method))

    def is_allowed(self) -> bool:
        return self.check(name)

    run_command.__name__ = run_command.__qualname__ = name
    is_allowed.__name__ = f"is_{name}_allowed"
    return command(run_command, doc_in=doc, fisallowed=is_allowed)


#: commands of every device (BeamlineDevice), allowed in every state, in no table
KERNEL_COMMANDS = ("RepublishEvents",)


def table_checks(table: StateTable) -> dict[str, Callable]:
    """``is_<command>_allowed`` for every command of ``table`` (``write_``
    entries excepted): a device whose commands are written out by hand
    answers them all from its table with ``locals().update(table_checks(T))``
    in its class body."""
    checks = {}
    for name in table.commands:
        if name.startswith("write_"):
            continue

        def is_allowed(self, _name=name) -> bool:
            return self.check(_name)

        is_allowed.__name__ = f"is_{name}_allowed"
        checks[is_allowed.__name__] = is_allowed
    return checks


def component_attribute(
    name: str,
    read: str | Callable[[Any], Any],
    write: str | None = None,
    *,
    known: bool = True,
    persist: bool = False,
    **kwargs: Any,
):
    """A Tango attribute ``name`` served by the logic, in one declaration.

    ``read``: the logic's attribute or method that gives the value (or a
    function of the logic); with ``known`` a None value is refused with
    "not known yet" and the device's Status. ``write``: the logic's method
    that takes a written value; the write is allowed in the states the
    family's table allows for ``write_<name>`` (reads always are). With
    ``persist`` the value is a setting kept in the Tango database (where Tango
    keeps a memorized attribute's): a write is stored before it is
    acknowledged, or refused and undone (see :meth:`BeamlineDevice.persist`),
    and the stored value is applied when the device starts. Other keywords go
    to ``tango.server.attribute`` (dtype, unit, format, ...).
    """

    def current(logic):
        if callable(read):
            return read(logic)
        value = getattr(logic, read)
        return value() if callable(value) else value

    def fget(self):
        value = current(self.need_logic(f"read_{name}"))
        return self.value_or_fail(value, name) if known else value

    fget.__name__ = f"read_{name}"
    if write is None:
        return attribute(fget=fget, name=name, **kwargs)

    origin = f"write_{name}"

    def fset(self, value) -> None:
        logic = self.need_logic(origin)
        setter = getattr(logic, write)
        if not persist:
            self.run(origin, setter, value)
        else:
            old = current(logic)
            self.run(origin, setter, value)
            self.persist(name, current(logic), lambda: old is None or setter(old), origin)
        self.publish_changes()

    def fisallowed(self, req_type) -> bool:
        return self.check_write(req_type, origin)

    fset.__name__ = origin
    fisallowed.__name__ = f"is_{name}_allowed"
    kwargs.setdefault("access", AttrWriteType.READ_WRITE)
    attr = attribute(fget=fget, fset=fset, fisallowed=fisallowed, name=name, **kwargs)
    if persist:
        attr.beamline_setting = write  # the logic's setter, for restore_settings
    return attr


def _comparable(value: Any) -> Any:
    """A value as something ``==`` compares (arrays and lists as tuples)."""
    if isinstance(value, np.ndarray):
        return (value.shape, value.tobytes())
    if isinstance(value, list | tuple):
        return tuple(_comparable(v) for v in value)
    return value


def _stored(value: Any) -> list[str]:
    """A setting as Tango stores a memorized attribute: a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool | np.bool_):
        return ["true" if value else "false"]
    if isinstance(value, numbers.Integral):  # IntEnum included
        return [str(int(value))]
    if isinstance(value, numbers.Real):
        return [repr(float(value))]
    return [x for v in value for x in _stored(v)]


_FLOATS = (tango.CmdArgType.DevDouble, tango.CmdArgType.DevFloat)
_INTS = (
    tango.CmdArgType.DevShort,
    tango.CmdArgType.DevUShort,
    tango.CmdArgType.DevLong,
    tango.CmdArgType.DevULong,
    tango.CmdArgType.DevLong64,
    tango.CmdArgType.DevULong64,
    tango.CmdArgType.DevEnum,
    tango.CmdArgType.DevUChar,
)


def _restored(raw: list[str], attr) -> Any:
    """The value a stored setting stands for, by the attribute's type and format."""
    kind = attr.attr_type
    if kind in _FLOATS:
        convert: Callable[[str], Any] = float
    elif kind in _INTS:
        convert = int
    elif kind == tango.CmdArgType.DevBoolean:
        convert = _parse_bool
    else:
        convert = str
    values = [convert(v) for v in raw]
    if attr.attr_format == tango.AttrDataFormat.SCALAR:
        if len(values) != 1:
            raise ValueError(f"one value expected, {len(values)} stored")
        return values[0]
    return values


def _server_name() -> str:
    try:
        return tango.Util.instance().get_ds_name()
    except (tango.DevFailed, RuntimeError):
        return ""


def _test_crash(*args) -> None:
    """Test hook (BEAMLINE_TEST_HOOKS=1 only): 'segfault' dereferences NULL, 'exit' exits(3)."""
    import ctypes
    import os

    how = args[-1]  # (self, argin) or (argin,), depending on how PyTango binds it

    if how == "segfault":
        ctypes.string_at(0)
    elif how == "exit":
        os._exit(3)
    else:
        throw("TEST_HOOK", f"TestCrash takes 'segfault' or 'exit', not {how!r}", "TestCrash")


def _test_hang(*args) -> None:
    """Test hook (BEAMLINE_TEST_HOOKS=1 only): block this device's thread (and its
    monitor) for that many seconds, like a driver stuck in a call."""
    time.sleep(float(args[-1]))


_test_crash.__name__ = "TestCrash"
_test_hang.__name__ = "TestHang"


def run_server(classes, args=None) -> None:
    """Entry point of a device server executable named after its server."""
    argv = list(args or sys.argv)
    server = f"{argv[0].rsplit('/', 1)[-1]}/{argv[1] if len(argv) > 1 else ''}"
    if lifecycle.crash_at_init_requested(server):
        print(f"test hook: crash at init of {server}", file=sys.stderr, flush=True)
        sys.exit(4)
    event_ports.enter(server)  # its events through the host's event relay
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tango.server import run

    run(classes, args=args)
