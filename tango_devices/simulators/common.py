"""What the simulated controllers share: configuration checks and the ASCII protocol frame.

Pure logic: no I/O, no ``tango``, no driver import.

- Configuration (every kind, the EPICS IOC included): :func:`check_keys`,
  :func:`entries`, :func:`numbered`, :func:`check_name`,
  :func:`optional_bool`, :func:`non_empty_string`, :func:`seconds_between`,
  :func:`optional_seed`; each ``ValueError``
  names the bad key with its ``where`` prefix (``axes.3.``).
- The line protocols (``docs/protocol-*.md``): a request is
  ``[address:]COMMAND args``, the reply starts with the echo of
  ``[address:]COMMAND``, then the result or ``ERROR <code> <message>``.
  :class:`LineProtocol` answers request lines from a table of
  :class:`Command` (``handle_line``); :class:`CommandError` is a refused
  request; :func:`no_args`, :func:`one_arg`, :func:`decimal_arg` and
  :func:`seconds_arg` check the arguments. :class:`PhysicsController` adds the constructor of the
  kinds that see the beamline physics, :class:`WithoutFaults` the fault
  interface of a kind without faults of its own.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tango_devices.simulators.physics import BeamlinePhysics

MAX_LINE = 128

# Error codes every protocol shares (docs/protocol-*.md).
E_UNKNOWN_COMMAND = 1
E_BAD_ARGUMENT = 2

NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
#: a decimal number, with an optional exponent
DECIMAL_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


# ----------------------------------------------------------------- configuration
def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_keys(where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse a key of ``data`` not in ``allowed`` (keys starting with ``_`` are comments)."""
    for key in data:
        if key not in allowed and not str(key).startswith("_"):
            raise ValueError(
                f"{where}{key}: unknown key; valid keys are {', '.join(allowed)} "
                "(keys starting with '_' are comments)"
            )


def entries(data: Mapping[Any, Any]) -> Iterator[tuple[Any, Any]]:
    """The items of a configuration object, without its comments (keys starting with ``_``)."""
    return ((key, value) for key, value in data.items() if not str(key).startswith("_"))


def numbered(
    section: str,
    data: Mapping[Any, Any],
    what: str,
    check: Callable[[str, Any], None] | None = None,
) -> dict[int, Any]:
    """The entries of an object keyed ``"1"``, ``"2"``, ... without gaps, by
    number in order; ``check(key, value)`` (if given) validates each entry
    as it comes. ``section`` (``axes``) and ``what`` (``axis``) name them in
    the errors."""
    numbers: dict[int, Any] = {}
    for key, value in entries(data):
        if not (
            isinstance(key, str)
            and key.isascii()
            and key.isdigit()
            and int(key) >= 1
            and key == str(int(key))
        ):
            raise ValueError(f"{section}.{key}: {what} numbers must be 1, 2, 3, ...")
        if check is not None:
            check(key, value)
        numbers[int(key)] = value
    if sorted(numbers) != list(range(1, len(numbers) + 1)):
        got = ", ".join(str(n) for n in sorted(numbers))
        raise ValueError(f"{section}: {section} must be numbered 1..N without gaps, got {got}")
    return {n: numbers[n] for n in sorted(numbers)}


def check_name(where: str, name: Any) -> str:
    """A name as the configuration gives controllers, shutters or devices."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(f"{where}: a name starts with a letter, then letters, digits, '_' or '-'")
    return name


def optional_bool(where: str, data: Mapping[str, Any], key: str, default: bool) -> bool:
    """The optional true/false ``key`` of ``data``."""
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{where}{key}: must be true or false, got {value!r}")
    return value


def non_empty_string(where: str, key: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}{key}: must be a non-empty string, got {value!r}")
    return value


def seconds_between(where: str, key: str, value: Any, low: float, high: float) -> float:
    """A number of seconds in ``low..high``."""
    if not is_number(value) or not low <= value <= high:
        raise ValueError(
            f"{where}{key}: must be a number of seconds between {low:g} and {high:g}, got {value!r}"
        )
    return float(value)


def optional_seed(data: Mapping[str, Any]) -> int | None:
    """The optional ``seed`` of a controller's noise (None: a random one)."""
    value = data.get("seed")
    if value is not None and (not is_int(value) or value < 0):
        raise ValueError(f"seed: must be a non-negative integer, got {value!r}")
    return value


def check_fault_kind(name: str, kind: str, valid: tuple[str, ...]) -> None:
    """Refuse a fault ``kind`` that controller ``name`` does not have."""
    if kind not in valid:
        raise ValueError(
            f"unknown fault kind {kind!r} for {name}: valid kinds are " + ", ".join(valid)
        )


# ---------------------------------------------------------------------- protocol
class CommandError(Exception):
    """A request the controller refuses: becomes ``ERROR <code> <message>``."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{message} (error {code})")
        self.code = code
        self.message = message


def printable(value: str) -> str:
    """Keep a reply on one ASCII line whatever text was configured or injected."""
    return "".join(c if " " <= c <= "~" else "?" for c in value)


def format_seconds(seconds: float) -> str:
    """Seconds as the protocols write them: fixed point, at most 6 decimals."""
    formatted = f"{seconds:.6f}".rstrip("0").rstrip(".")
    return formatted or "0"


def no_args(args: list[str]) -> None:
    if args:
        raise CommandError(E_BAD_ARGUMENT, f"bad argument: takes no argument, got {' '.join(args)}")


def one_arg(args: list[str], what: str) -> str:
    if len(args) != 1:
        got = "nothing" if not args else " ".join(args)
        raise CommandError(E_BAD_ARGUMENT, f"bad argument: expected {what}, got {got}")
    return args[0]


def decimal_arg(args: list[str], what: str, pattern: re.Pattern[str] = DECIMAL_RE) -> str:
    """The one argument, a finite decimal number (as ``pattern`` spells them)."""
    arg = one_arg(args, what)
    if not pattern.fullmatch(arg) or not math.isfinite(float(arg)):
        raise CommandError(E_BAD_ARGUMENT, f"bad argument: not a decimal number: {arg}")
    return arg


def seconds_arg(args: list[str], what: str, low: float, high: float) -> float:
    """The one argument of a time setting: seconds in ``low..high``, rounded to
    the microsecond; ``what`` names the setting in the error."""
    arg = decimal_arg(args, "seconds")
    value = round(float(arg), 6)
    if not low <= value <= high:
        raise CommandError(
            E_BAD_ARGUMENT, f"bad argument: {what} must be {low:g}..{high:g} s, got {arg}"
        )
    return value


@dataclass(frozen=True)
class Command:
    """A protocol command: ``handler(args)``, or for an ``addressed`` command
    (``n:MOVE``, ``fe:OPEN``) ``handler(target, args, now)``."""

    handler: Callable[..., str | bytes]
    addressed: bool = False


class LineProtocol:
    """``handle_line`` for a controller whose commands are in ``_commands``.

    A plain protocol (``addressed = False``) reads ``COMMAND args``. An
    addressed one reads ``[address:]COMMAND args`` and implements the hooks
    :meth:`_advance`, :meth:`_target` and :meth:`_unaddressable` (and
    :meth:`_echo_address` when the echo normalises the address).
    ``printable_errors`` keeps injected or configured texts in error replies
    on one ASCII line.
    """

    addressed = False
    printable_errors = False
    _commands: Mapping[str, Command]
    _clock: Callable[[], float]

    def handle_line(self, line: str) -> str | bytes:
        """Answer one request line (without its terminator); the reply has no
        terminator either (a ``bytes`` reply is sent as it is). A blank line
        gets no reply: returns ``""``."""
        line = line.strip()
        if not line:
            return ""
        head, *args = line.split()
        address, sep, command = head.rpartition(":") if self.addressed else ("", "", head)
        command = command.upper()
        echo = f"{self._echo_address(address)}{sep}{command}"
        try:
            if len(line) > MAX_LINE:
                raise CommandError(
                    E_BAD_ARGUMENT, f"bad argument: line longer than {MAX_LINE} characters"
                )
            spec = self._commands.get(command)
            if spec is None:
                raise CommandError(E_UNKNOWN_COMMAND, "unknown command")
            reply = self._run(spec, command, address, sep, args)
        except CommandError as exc:
            message = printable(exc.message) if self.printable_errors else exc.message
            return f"{echo} ERROR {exc.code} {message}"
        return reply if isinstance(reply, bytes) else f"{echo} {reply}"

    def _run(
        self, spec: Command, command: str, address: str, sep: str, args: list[str]
    ) -> str | bytes:
        if not self.addressed:
            return spec.handler(args)
        now = self._advance()
        if spec.addressed:
            return spec.handler(self._target(address, sep), args, now)
        if sep:
            raise self._unaddressable(command)
        return spec.handler(args)

    def _ok_action(self, action: Callable[[float], object]) -> Callable[[list[str]], str]:
        """The handler of a command without argument that runs ``action(now)``
        and replies ``OK``."""

        def handler(args: list[str]) -> str:
            no_args(args)
            action(self._clock())
            return "OK"

        return handler

    # ------------------------------------------------- addressed protocols
    def _echo_address(self, address: str) -> str:
        """The address as the reply echoes it."""
        return address

    def _advance(self) -> float:
        """Bring the model up to now before a command runs; returns now."""
        raise NotImplementedError

    def _target(self, address: str, sep: str) -> Any:
        """What ``address`` names (``sep`` is ``""`` when there is none); a
        :class:`CommandError` if it names nothing."""
        raise NotImplementedError

    def _unaddressable(self, command: str) -> CommandError:
        """The error for an address on a controller-wide ``command``."""
        raise NotImplementedError


class PhysicsController(LineProtocol):
    """A line-protocol controller that sees the beamline physics, built as
    ``Kind(name, config, clock, physics)`` like every kind of the simulator's
    configuration; a subclass reads ``config`` in :meth:`_configure`."""

    def __init__(
        self,
        name: str,
        config: Mapping[str, Any],
        clock: Callable[[], float] = time.monotonic,
        physics: BeamlinePhysics | None = None,
    ):
        self.name = name
        self._clock = clock
        self.physics = physics if physics is not None else BeamlinePhysics()
        self._configure(config)

    def _configure(self, config: Mapping[str, Any]) -> None:
        """Validate ``config`` (a ``ValueError`` names the bad key) and set up."""
        raise NotImplementedError


class WithoutFaults:
    """A controller with no fault kinds of its own: only the link faults apply."""

    name: str
    fault_kinds: tuple[str, ...] = ()

    def inject_fault(self, kind: str, request: Mapping[str, Any]) -> str:
        """Refused: there is no fault kind to inject."""
        raise ValueError(f"unknown fault kind {kind!r} for {self.name}: it has no fault kinds")

    def clear_faults(self) -> None:
        """Nothing to clear (no fault kinds of its own)."""

    def active_faults(self) -> list[str]:
        return []
