"""What the operator GUI shows, without Qt or Tango.

The beam-line layout of the overview, which commands a device allows in a
state, and the rows of the queue, history and supervisor tables, computed
from the JSON the devices publish. Kept apart from the widgets so that it is
tested without a display and the widgets stay thin.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Commands every Tango device has, or that only tests use: never shown as buttons.
HIDDEN_COMMANDS = frozenset({"Init", "State", "Status", "TestCrash", "TestHang"})
# Attributes that are not for a form (the camera's image has its own panel;
# the supervisor's ProbeAnswers is JSON for `beamline status`).
HIDDEN_ATTRIBUTES = frozenset(
    {"State", "Status", "CommandStates", "Image", "Report", "Items", "ProbeAnswers"}
)


GRID_OVER = 12  # a section of more devices: a grid below the beam, forms on demand


@dataclass(frozen=True)
class Section:
    """One stop along the beam in the overview, with its devices in order."""

    title: str
    devices: tuple[str, ...]
    note: str = ""


@dataclass
class Layout:
    sections: list[Section]
    missing: list[str] = field(default_factory=list)  # in the layout, not in the database


def layout(
    sections: Sequence[Section],
    existing: Iterable[str] | Mapping[str, str],
    other: str = "Other",
) -> Layout:
    """The configured ``sections`` restricted to the ``existing`` devices.

    A configured device the database does not know is left out (and named in
    ``missing``); a device of the database that no section names goes into a
    last section ``other``, so that a device added to db_config shows up in
    the overview without editing the GUI. When ``existing`` maps each device
    to its class, those devices are grouped by class instead ("Motor (160)"):
    a beamline of 200 devices stays readable. Names compare
    case-insensitively, as Tango's do."""
    classes = dict(existing) if isinstance(existing, Mapping) else {}
    known = {d.lower(): d for d in existing}
    placed: set[str] = set()
    result: list[Section] = []
    missing: list[str] = []
    for section in sections:
        kept = []
        for device in section.devices:
            key = device.lower()
            if key in known:
                kept.append(known[key])
                placed.add(key)
            else:
                missing.append(device)
        if kept:
            result.append(Section(section.title, tuple(kept), section.note))
    rest = sorted(name for key, name in known.items() if key not in placed)
    if rest and classes:
        groups: dict[str, list[str]] = {}
        for name in rest:
            groups.setdefault(classes.get(name) or other, []).append(name)
        for klass in sorted(groups):
            result.append(Section(f"{klass} ({len(groups[klass])})", tuple(groups[klass])))
    elif rest:
        result.append(Section(other, tuple(rest)))
    return Layout(result, missing)


# ------------------------------------------------------------ command states
def parse_command_states(text: str) -> dict[str, frozenset[str]]:
    """The ``CommandStates`` attribute of our devices: a JSON object mapping a
    command (or ``write_<Attribute>``) to the states in which it is allowed."""
    if not text:
        return {}
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("CommandStates is not a JSON object")
    return {str(k): frozenset(str(s).upper() for s in v) for k, v in data.items()}


def command_enabled(command: str, state: str | None, table: Mapping[str, frozenset[str]]) -> bool:
    """Whether ``command`` may be sent in ``state``: the device's own table
    decides; a command the table does not list (Init, Sardana's) is always
    allowed; an unknown state (device not answering) allows nothing."""
    if state is None or (state.upper() == "UNKNOWN" and command in table):
        return False
    allowed = table.get(command)
    return True if allowed is None else state.upper() in allowed


def write_enabled(attribute: str, state: str | None, table: Mapping[str, frozenset[str]]) -> bool:
    return command_enabled(f"write_{attribute}", state, table)


# -------------------------------------------------------------------- queue
def parse_macro_line(text: str) -> dict[str, Any]:
    """'ascan sample_x 0 1 10 0.1' -> {"macro": "ascan", "args": [...]}.

    Raises ValueError naming the problem (the queue itself then checks the
    macro and its parameters against the MacroServer)."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"cannot read {text!r}: {exc}") from None
    if not words:
        raise ValueError("type a macro and its parameters, e.g. 'ct 0.1'")
    return {"macro": words[0], "args": words[1:]}


def _line(item: Mapping[str, Any]) -> str:
    return " ".join([str(item.get("macro", "?")), *(str(a) for a in item.get("args", []))])


def queue_rows(items_json: str) -> list[dict[str, str]]:
    """Rows of the queue table from the queue's ``Items`` attribute."""
    items = json.loads(items_json) if items_json else []
    return [
        {
            "uid": str(it.get("uid", "")),
            "macro": _line(it),
            "repeat": str(it.get("repeat", 1)),
            "meta": ", ".join(f"{k}={v}" for k, v in (it.get("meta") or {}).items()),
        }
        for it in items
    ]


def running_summary(running_json: str) -> tuple[str, int]:
    """A line about the running item and its progress in percent (0-100)."""
    if not running_json:
        return "nothing running", 0
    run = json.loads(running_json)
    repeat = int(run.get("repeat", 1) or 1)
    text = _line(run)
    if repeat > 1:
        text += f"  (repetition {run.get('repetition', 1)} of {repeat})"
    progress = run.get("progress") or 0.0
    try:
        percent = int(max(0.0, min(100.0, float(progress))))
    except (TypeError, ValueError):
        percent = 0
    return text, percent


def _clock(t: float | None) -> str:
    return "" if not t else time.strftime("%H:%M:%S", time.localtime(t))


def history_rows(history_json: str) -> list[dict[str, str]]:
    """Rows of the history table, newest first, from the queue's History command."""
    entries = json.loads(history_json) if history_json else []
    return [
        {
            "outcome": str(h.get("outcome", "")),
            "macro": _line(h),
            "repetitions": f"{h.get('repetitions_done', 0)}/{h.get('repeat', 1)}",
            "started": _clock(h.get("started")),
            "ended": _clock(h.get("ended")),
            "error": str(h.get("error") or ""),
        }
        for h in entries
    ]


# --------------------------------------------------------------- supervisor
SERVER_HEALTHY = frozenset({"RUNNING"})
SERVER_FAILED = frozenset({"FAILED", "HUNG", "BACKOFF", "RESTARTING"})


def supervisor_rows(report_json: str) -> list[dict[str, str]]:
    """Rows of the supervisor table from its ``Report`` attribute."""
    report = json.loads(report_json) if report_json else {}
    rows = []
    for s in report.get("servers", []):
        recovery = s.get("last_recovery")
        rows.append(
            {
                "server": str(s.get("server", "")),
                "state": str(s.get("state", "")),
                "pid": str(s.get("pid") or ""),
                "restarts": str(s.get("restarts", 0)),
                "uptime": _duration(s.get("uptime")),
                "last_cause": str(s.get("last_cause") or ""),
                "last_recovery": "" if recovery is None else f"{recovery:.2f} s",
            }
        )
    return rows


def _duration(seconds: Any) -> str:
    try:
        s = int(float(seconds))
    except (TypeError, ValueError):
        return ""
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ----------------------------------------------------------------- colours
# Tango's conventional state colours (Jive, Astor, ATK), as background/text.
STATE_COLOURS: dict[str, tuple[str, str]] = {
    "ON": ("#00ff00", "black"),
    "OFF": ("#ffffff", "black"),
    "CLOSE": ("#ffffff", "green"),
    "OPEN": ("#00ff00", "black"),
    "INSERT": ("#ffffff", "black"),
    "EXTRACT": ("#00ff00", "black"),
    "MOVING": ("#80a0ff", "black"),
    "STANDBY": ("#ffff00", "black"),
    "FAULT": ("#ff0000", "white"),
    "INIT": ("#cccc7a", "black"),
    "RUNNING": ("#80a0ff", "black"),
    "ALARM": ("#ff8c00", "black"),
    "DISABLE": ("#ff00ff", "black"),
    "UNKNOWN": ("#808080", "white"),
}
SERVER_COLOURS: dict[str, tuple[str, str]] = {
    "RUNNING": ("#00ff00", "black"),
    "STARTING": ("#80a0ff", "black"),
    "RESTARTING": ("#ff8c00", "black"),
    "HUNG": ("#ff0000", "white"),
    "BACKOFF": ("#ff0000", "white"),
    "FAILED": ("#ff0000", "white"),
    "STOPPED": ("#ffffff", "black"),
    "NOT_STARTED": ("#ffffff", "black"),
}


def state_name(value: Any) -> str:
    """'ON' from tango.DevState.ON, 'DevState.ON', 'ON' or None (-> UNKNOWN)."""
    if value is None:
        return "UNKNOWN"
    return str(value).rsplit(".", 1)[-1].upper()


def state_style(state: str) -> str:
    bg, fg = STATE_COLOURS.get(state.upper(), STATE_COLOURS["UNKNOWN"])
    return f"background-color: {bg}; color: {fg};"


def server_style(state: str) -> str:
    bg, fg = SERVER_COLOURS.get(state.upper(), ("#808080", "white"))
    return f"background-color: {bg}; color: {fg};"


def interlock_text(value: Any) -> str:
    """The shutter's Interlock attribute for operators."""
    return "INTERLOCKED: the shutter cannot open" if bool(value) else "clear"


def or_none(value: Any) -> str:
    """A text attribute that is empty when there is nothing to say."""
    text = str(value).strip() if value is not None else ""
    return text or "none"
