"""Tango-side helpers shared by every device server of the suite.

- :class:`BeamlineDevice` maps the component logic's :class:`State` to
  ``DevState``, pushes State change events, and turns refusals and hardware
  errors into DevFailed exceptions with a clear reason and description.
- :func:`run_server` is the ``main()`` of every server: it registers a
  faulthandler on SIGUSR1 (a supervisor can dump the stacks of every thread of
  a hung server into its log) and runs the Tango server.
"""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys

import tango
from tango import AttrQuality, DevState
from tango.server import Device

from tango_devices.common.statemachine import CommandRefused, State, StateMachine

QUALITY = {
    "VALID": AttrQuality.ATTR_VALID,
    "CHANGING": AttrQuality.ATTR_CHANGING,
    "INVALID": AttrQuality.ATTR_INVALID,
    "ALARM": AttrQuality.ATTR_ALARM,
    "WARNING": AttrQuality.ATTR_WARNING,
}


def to_devstate(state: State) -> DevState:
    return getattr(DevState, state.value)


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

    def init_state_events(self, machine: StateMachine) -> None:
        """Mirror ``machine`` into the Tango state; State/Status events are
        pushed by the code the moment the state changes."""
        self._machine = machine
        self._mirrored: tuple[State, str] | None = None
        self.set_change_event("State", True, False)
        self.set_change_event("Status", True, False)
        machine.add_listener(self.mirror_state)

    def mirror_state(self, *_change) -> None:
        """StateMachine listener (any thread): copy the *current* state into
        Tango and push events. Runs under the device monitor, so mirrors from
        several threads are serialised and the last one shows the latest state."""
        with tango.AutoTangoMonitor(self):
            state, status = self._machine.state, self._machine.status
            if (state, status) == self._mirrored:
                return
            state_changed = self._mirrored is None or self._mirrored[0] != state
            self._mirrored = (state, status)
            devstate = to_devstate(state)
            self.set_state(devstate)
            self.set_status(status)
            try:
                if state_changed:
                    self.push_change_event("State", devstate)
                self.push_change_event("Status", status)
            except tango.DevFailed as exc:
                self.warn_stream(f"could not push State event: {exc.args[0].desc}")

    def refuse(self, exc: Exception, origin: str) -> None:
        """Turn a logic-layer refusal into a DevFailed that names the problem."""
        if isinstance(exc, CommandRefused):
            throw("API_CommandNotAllowed", str(exc), origin)
        throw(f"{type(self).__name__.upper()}_ERROR", str(exc), origin)


def run_server(classes, args=None) -> None:
    """Entry point of a device server executable named after its server."""
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tango.server import run

    run(classes, args=args)
