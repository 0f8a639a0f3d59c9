"""Client driver for an EPICS motor record (pyepics, Channel Access).

:class:`EpicsMotorRecord` has the public interface of
:class:`~tango_devices.drivers.motion_ascii.MotionController`, so the Motor
component logic drives either. One driver is one record; ``axis`` arguments
are checked (an integer >= 1) and otherwise ignored.

Positions are *steps* = dial position / MRES, rounded: a Tango Motor
configured with ``StepsPerUnit = 1 / MRES`` sees dial positions in the
record's engineering units, exactly as with an SMC axis. Velocities are
steps/s (VELO / MRES), the acceleration time is ACCL.

Every read asks the IOC (one pipelined round trip for all the fields it
needs); every write waits for the IOC to have processed it, so a read after
a command sees its effect. Errors:

- :class:`LinkError`: a PV is disconnected or does not answer in time (the
  channels reconnect by themselves; ``connect`` also re-creates them);
- :class:`ControllerRejected`: refused before writing, with the SMC error
  codes (2 bad argument, 4 not powered, 6 limit, 7 fault, 8 motion disabled).

``url``: ``ca://RECORD`` (or the bare record name) with the process's
Channel Access environment, or ``ca://HOST:PORT/RECORD`` to point Channel
Access at one server (see :func:`tango_devices.drivers.epics_ca.configure`).
No ``tango`` import.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from tango_devices.drivers.epics_ca import Channels, configure, severity_name, status_name
from tango_devices.drivers.errors import ControllerRejected, LinkError, ProtocolError
from tango_devices.drivers.motion_ascii import AxisStatus

FIELDS = (
    "VAL",
    "DVAL",
    "RBV",
    "DRBV",
    "DMOV",
    "MOVN",
    "STOP",
    "HLS",
    "LLS",
    "VELO",
    "VMAX",
    "ACCL",
    "MRES",
    "EGU",
    "OFF",
    "CNEN",
    "MSTA",
    "HOMF",
    "HOMR",
    "SPMG",
)
# DMOV first: the IOC answers the requests in order, possibly updating the record
# in between, so once DMOV says done the position read after it is final
STATUS_FIELDS = ("DMOV", "DRBV", "HLS", "LLS", "CNEN", "MSTA", "HOMF", "HOMR")

# MSTA bits (motor record documentation; bit n is mask 1 << (n - 1))
MSTA_PROBLEM = 0x0200
MSTA_HOMED = 0x4000
SPMG_NAMES = ("Stop", "Pause", "Move", "Go")
SPMG_GO = 3
MIN_ACCELERATION_TIME = 0.001
MAX_ACCELERATION_TIME = 10.0

E_UNSUPPORTED = 1
E_BAD_ARGUMENT = 2
E_NOT_POWERED = 4
E_LIMIT = 6
E_FAULT = 7
E_DISABLED = 8


def parse_url(url: str) -> tuple[str | None, str]:
    """``ca://HOST:PORT/RECORD`` -> (``"HOST:PORT"``, ``"RECORD"``);
    ``ca://RECORD`` or ``RECORD`` -> (None, ``"RECORD"``)."""
    text = url.strip()
    if text.startswith("ca://"):
        text = text[len("ca://") :]
    address, _, record = text.rpartition("/")
    if not record or "." in record or any(c.isspace() for c in record) or "://" in text:
        raise ValueError(
            f"{url!r} is not a motor record URL: use ca://RECORD or ca://HOST:PORT/RECORD "
            "(record name without a field, e.g. ca://BL01:OPT:MIR:PITCH)"
        )
    return address or None, record


def _axis(axis: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int) or axis < 1:
        raise ValueError(f"axis must be an integer >= 1, got {axis!r}")
    return axis


def _int_arg(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return value


class EpicsMotorRecord:
    """One EPICS motor record, driven like an SMC axis (thread-safe)."""

    #: the record's raw position (RVAL/RRBV) is a 32-bit integer
    MAX_STEPS = 2**31 - 1

    def __init__(self, url: str, timeout: float = 0.5):
        self.url = url
        self.timeout = timeout
        self.addr_list, self.record = parse_url(url)
        self._lock = threading.RLock()
        self._channels = Channels([self._pv(f) for f in FIELDS], monitor=False)
        self._mres: float | None = None

    def _pv(self, field: str) -> str:
        return f"{self.record}.{field}"

    # ------------------------------------------------------------ link
    @property
    def connected(self) -> bool:
        """True while every field's channel is connected (after :meth:`connect`)."""
        return self._mres is not None and self._channels.connected

    def connect(self) -> str:
        """(Re)create the channels, wait up to ``timeout`` for them and read
        MRES; returns the identity, e.g. ``EPICS motor record BL01:OPT:MIR:PITCH``."""
        with self._lock:
            configure(self.addr_list)
            self._channels.open()
            missing = self._channels.wait(self.timeout)
            if missing:
                shown = (
                    "no field answers"
                    if len(missing) == len(FIELDS)
                    else "fields " + ", ".join(m.rsplit(".", 1)[-1] for m in missing)
                )
                raise LinkError(
                    f"motor record {self.record} did not connect within {self.timeout:g} s "
                    f"({shown}): check that the IOC runs and that EPICS_CA_ADDR_LIST "
                    "(or ca://HOST:PORT/ in the URL) reaches it"
                )
            mres = self._read("MRES")["MRES"]
            if not isinstance(mres, int | float) or not math.isfinite(mres) or mres == 0:
                raise ProtocolError(f"{self.record}.MRES is {mres!r}: need a non-zero resolution")
            self._mres = abs(float(mres))
            return self.identify()

    def close(self) -> None:
        """Clear the channels (idempotent)."""
        with self._lock:
            self._mres = None
            self._channels.close()

    def identify(self) -> str:
        return f"EPICS motor record {self.record}"

    # -------------------------------------------------------- exchange
    def _read(self, *fields: str) -> dict[str, Any]:
        with self._lock:
            replies = self._channels.read([self._pv(f) for f in fields], self.timeout)
            return {f: replies[self._pv(f)]["value"] for f in fields}

    def _read_meta(self, field: str) -> dict[str, Any]:
        with self._lock:
            return self._channels.read([self._pv(field)], self.timeout)[self._pv(field)]

    def _put(self, field: str, value: Any) -> None:
        with self._lock:
            self._channels.put(self._pv(field), value, self.timeout)

    def request(self, line: str) -> str:
        """Raw access to a field: ``"VELO"`` reads it (as text), ``"VELO 0.5"``
        writes it and returns ``OK``."""
        field, _, value = line.strip().partition(" ")
        field = field.upper()
        if field not in FIELDS:
            raise ControllerRejected(
                E_UNSUPPORTED, f"unknown field {field!r}: known are {', '.join(FIELDS)}", line
            )
        if not value.strip():
            return str(self._read(field)[field])
        text = value.strip()
        try:
            number: Any = float(text)
        except ValueError:
            number = text
        self._put(field, number)
        return "OK"

    @property
    def mres(self) -> float:
        if self._mres is None:
            raise LinkError(f"not connected to motor record {self.record}")
        return self._mres

    def _steps(self, dial: Any) -> int:
        try:
            return round(float(dial) / self.mres)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"{self.record}.DRBV is {dial!r}: not a number") from exc

    # ------------------------------------------------------------- axis
    def read_position_status(self, axis: int) -> tuple[int, AxisStatus]:
        """Dial position (steps) and status, one round trip."""
        _axis(axis)
        values = self._read(*STATUS_FIELDS)
        msta = int(values["MSTA"])
        done = bool(values["DMOV"])
        flags = (
            (not done, AxisStatus.MOVING),
            (bool(values["CNEN"]), AxisStatus.POWER),
            (bool(values["LLS"]), AxisStatus.LIM_NEG),
            (bool(values["HLS"]), AxisStatus.LIM_POS),
            (bool(msta & MSTA_PROBLEM), AxisStatus.FAULT),
            (bool(msta & MSTA_HOMED), AxisStatus.HOMED),
            (not done and bool(values["HOMF"] or values["HOMR"]), AxisStatus.HOMING),
        )
        word = sum(mask for on, mask in flags if on)
        return self._steps(values["DRBV"]), AxisStatus.from_word(word)

    def read_position(self, axis: int) -> int:
        """The dial read-back (DRBV), in steps."""
        _axis(axis)
        return self._steps(self._read("DRBV")["DRBV"])

    def read_status(self, axis: int) -> AxisStatus:
        return self.read_position_status(axis)[1]

    def read_velocity(self, axis: int) -> int:
        """VELO in steps/s."""
        _axis(axis)
        return round(float(self._read("VELO")["VELO"]) / self.mres)

    def write_velocity(self, axis: int, steps_per_s: int) -> None:
        """Set VELO; refused (error 2) outside 1..VMAX steps/s."""
        _axis(axis)
        steps = _int_arg("velocity", steps_per_s)
        vmax = float(self._read("VMAX")["VMAX"])
        limit = math.floor(vmax / self.mres + 1e-9) if vmax > 0 else None
        if steps < 1 or (limit is not None and steps > limit):
            allowed = f"1..{limit}" if limit is not None else "at least 1"
            raise ControllerRejected(
                E_BAD_ARGUMENT,
                f"bad argument: velocity must be {allowed} steps/s, got {steps}",
                f"{self.record}.VELO",
            )
        self._put("VELO", steps * self.mres)

    def read_acceleration_time(self, axis: int) -> float:
        """ACCL: seconds to reach the velocity."""
        _axis(axis)
        return float(self._read("ACCL")["ACCL"])

    def write_acceleration_time(self, axis: int, seconds: float) -> None:
        _axis(axis)
        if not (
            isinstance(seconds, int | float)
            and MIN_ACCELERATION_TIME <= seconds <= MAX_ACCELERATION_TIME
        ):
            raise ControllerRejected(
                E_BAD_ARGUMENT,
                f"bad argument: acceleration time must be {MIN_ACCELERATION_TIME:g}.."
                f"{MAX_ACCELERATION_TIME:g} s, got {seconds!r}",
                f"{self.record}.ACCL",
            )
        self._put("ACCL", float(seconds))

    def _check_can_move(self, what: str, values: dict[str, Any]) -> None:
        """Refuse as an SMC would: fault (7), power (4), motion disabled (8)."""
        if int(values["MSTA"]) & MSTA_PROBLEM:
            raise ControllerRejected(
                E_FAULT, "axis fault: the motor record reports a problem (MSTA 0x200)", what
            )
        if not values["CNEN"]:
            raise ControllerRejected(E_NOT_POWERED, "axis not powered: CNEN is Disable", what)
        spmg = int(values["SPMG"])
        if spmg != SPMG_GO:
            name = SPMG_NAMES[spmg] if 0 <= spmg < len(SPMG_NAMES) else str(spmg)
            raise ControllerRejected(
                E_DISABLED, f"motion disabled: SPMG is {name}; set it to Go", what
            )

    def move(self, axis: int, steps: int) -> None:
        """Absolute move to a dial position in steps (DVAL); returns once the
        IOC accepted it. Refused towards an active limit switch (6)."""
        _axis(axis)
        target = _int_arg("steps", steps)
        what = f"{self.record}.DVAL"
        with self._lock:
            values = self._read("DRBV", "HLS", "LLS", "CNEN", "MSTA", "SPMG")
            self._check_can_move(what, values)
            current = self._steps(values["DRBV"])
            if values["HLS"] and target > current:
                raise ControllerRejected(E_LIMIT, "limit switch active: high limit (HLS)", what)
            if values["LLS"] and target < current:
                raise ControllerRejected(E_LIMIT, "limit switch active: low limit (LLS)", what)
            self._put("DVAL", target * self.mres)

    def stop(self, axis: int) -> None:
        """Decelerating stop (STOP = 1), also ends a home move."""
        _axis(axis)
        self._put("STOP", 1)

    def home(self, axis: int, direction: int = +1) -> None:
        """HOMF (+1) or HOMR (-1): move to the home position, then homed."""
        _axis(axis)
        if direction not in (1, -1):
            raise ValueError(f"direction must be +1 or -1, got {direction!r}")
        field = "HOMF" if direction > 0 else "HOMR"
        with self._lock:
            self._check_can_move(f"{self.record}.{field}", self._read("CNEN", "MSTA", "SPMG"))
            self._put(field, 1)

    def set_position(self, axis: int, steps: int) -> None:
        """Not supported: calibrate with the Motor device's offset instead."""
        _axis(axis)
        _int_arg("steps", steps)
        raise ControllerRejected(
            E_UNSUPPORTED,
            "setting the position is not supported for an EPICS motor record: "
            "calibrate with the device's SetPosition (its offset) instead",
            f"{self.record}.SET",
        )

    def power(self, axis: int, on: bool) -> None:
        """Amplifier enable (CNEN)."""
        _axis(axis)
        self._put("CNEN", 1 if on else 0)

    def read_power(self, axis: int) -> bool:
        _axis(axis)
        return bool(self._read("CNEN")["CNEN"])

    def read_fault(self, axis: int) -> str | None:
        """Text of the problem the record reports (MSTA problem bit, with the
        record's alarm), None if there is none."""
        _axis(axis)
        with self._lock:
            msta = int(self._read("MSTA")["MSTA"])
            if not msta & MSTA_PROBLEM:
                return None
            meta = self._read_meta("RBV")
        text = f"motor record {self.record} reports a problem (MSTA 0x{msta:04X})"
        severity = int(meta.get("severity") or 0)
        if severity:
            text += f", alarm {status_name(int(meta.get('status') or 0))} {severity_name(severity)}"
        return text

    def reset(self, axis: int) -> None:
        """Nothing to reset: a motor record's problem clears when its cause goes."""
        _axis(axis)
