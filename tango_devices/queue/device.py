"""ExperimentQueue: a crash-proof queue of Sardana macros (Tango layer).

Commands take and return JSON. Every edit is committed to SQLite (WAL)
before the command returns; a rejected edit changes nothing and says why.
Every command is allowed where the queue's table (``queue/states.py``) allows
it; the table is published as ``CommandStates``, keyed by ``QueueState``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import tango
from tango import AttrQuality, DevState
from tango.server import attribute, command, device_property

from tango_devices.common.device_base import BeamlineDevice, run_server, table_checks, throw
from tango_devices.common.jsonargs import ArgumentError
from tango_devices.queue import schemas
from tango_devices.queue.queue_logic import Deadline, QueueError, QueueLogic
from tango_devices.queue.states import QUEUE_TABLE, RUNNING
from tango_devices.queue.store import QueueStore, StoreError
from tango_devices.queue.tango_ports import DoorPort, HealthPort, Interlock, MacroPort

log = logging.getLogger(__name__)


class ExperimentQueue(BeamlineDevice):
    """Runs queued Sardana macros one after another on a Door; survives crashes."""

    Door = device_property(
        dtype=str, default_value="bl01/sardana/door", doc="Door running the macros"
    )
    MacroServer = device_property(
        dtype=str, default_value="bl01/sardana/macroserver", doc="MacroServer declaring the macros"
    )
    Database = device_property(
        dtype=str,
        default_value="",
        doc="SQLite file of the queue (default: RUN_DIR/queue/<device name>.sqlite)",
    )
    Interlocks = device_property(
        dtype=(str,),
        default_value=[],
        doc="'domain/family/member/Attribute OP VALUE : label' per interlock (OP: == != > < in)",
    )
    ReadinessTimeout = device_property(
        dtype=float, default_value=2.0, doc="s: a needed device must answer within this"
    )

    def init_device(self) -> None:
        super().init_device()
        # StopMacro/AbortMacro wait for the macro to end: without NO_SYNC they
        # would hold the device's lock and State reads (the supervisor's hang
        # probe) would wait. The logic and the publisher have their own locks.
        tango.Util.instance().set_serial_model(tango.SerialModel.NO_SYNC)
        self._publish_lock = threading.RLock()
        self.set_state(DevState.INIT)
        for name in ("QueueState", "RunningItem", "QueueLength", "LastError", "BlockedBy", "Items"):
            self.set_change_event(name, True, False)
        try:
            interlocks = [Interlock.parse(t) for t in self.Interlocks]
        except ValueError as exc:
            self.misconfigured(f"Interlocks property: {exc}")
            return
        path = Path(self.Database) if self.Database else self._default_db()
        try:
            self.store = QueueStore(path)
        except StoreError as exc:
            self.misconfigured(f"Database: {exc}")
            return
        self.logic = QueueLogic(
            self.store,
            MacroPort(self.MacroServer, self.Door),
            DoorPort(self.Door),
            HealthPort(interlocks, self.ReadinessTimeout),
            on_change=self._publish,
            readiness_timeout=self.ReadinessTimeout,
        )
        self._last: dict[str, Any] = {}
        self._items_version = -1
        self._items_json = "[]"
        self._items_pushed = -1
        # the logic reports its changes through on_change: _publish mirrors them
        self.init_state_events(self.logic.machine, listen=False)
        self.logic.open()
        self._publish(items=True)
        # the running item's progress (from the Door's MacroStatus) changes
        # without an edit, and the item list is pushed from here: a few times a
        # second
        self._ticker_stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="queue-progress", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._ticker_stop.wait(0.5):
            logic = self.logic
            if logic is None:
                continue
            if logic.current is not None or self.store.version != self._items_pushed:
                try:
                    self._publish(items=True)
                except Exception:  # never let the ticker die
                    log.exception("publishing the queue's progress failed")

    def _default_db(self) -> Path:
        import os

        run_dir = Path(os.environ.get("BEAMLINE_RUN_DIR", "var"))
        return run_dir / "queue" / (self.get_name().replace("/", "_") + ".sqlite")

    def delete_device(self) -> None:
        super().delete_device()
        if getattr(self, "_ticker_stop", None):
            self._ticker_stop.set()
        if self.logic is not None:
            self.logic.close()
            self.store.close()
            self.logic = None

    # ------------------------------------------------------------ publishing
    def tango_state(self) -> tuple[DevState, str]:
        """The queue's state as Tango shows it: ALARM while running but
        blocked (interlock, devices down); a Status with the length and the
        running item."""
        logic = self.logic
        state, blocked, current = logic.state, logic.blocked_by, logic.current
        devstate = (
            DevState.ALARM if blocked and state == RUNNING else getattr(DevState, state.tango)
        )
        status = f"Queue {state}, {len(self.store.items)} item(s)"
        if current is not None:
            status += f"; running {current.item.uid} ({current.item.macro})"
        if blocked:
            status += f"; blocked by {blocked}"
        return devstate, status

    def _publish(self, items: bool = False) -> None:
        """Push what changed. The item list is pushed by the ticker (at most
        twice a second), not on the runner's path: a long queue would add its
        serialisation to every item."""
        snap = self.logic.snapshot(items=False)
        values = {
            "QueueState": str(snap["state"]),
            "RunningItem": json.dumps(snap["running"]) if snap["running"] else "",
            "QueueLength": snap["length"],
            "LastError": snap["last_error"],
            "BlockedBy": snap["blocked_by"],
        }
        if items:
            version = self.store.version
            if version != self._items_pushed:  # 10,000 items: ~0.15 s, so not on every change
                self._items_pushed = version
                values["Items"] = self._items_text()
        self.mirror_state()
        with self._publish_lock:
            for name, value in values.items():
                if self._last.get(name) != value:
                    self._last[name] = value
                    self.push(name, value, AttrQuality.ATTR_VALID)

    # ------------------------------------------------------------ attributes
    @attribute(dtype=str, description="idle, running, paused or stopping")
    def QueueState(self) -> str:
        return str(self.need_logic("QueueState").state)

    @attribute(
        dtype=str, description="The running item as JSON (with repetition and progress), or empty"
    )
    def RunningItem(self) -> str:
        self.need_logic("RunningItem")
        return self._last.get("RunningItem", "")

    @attribute(dtype=int, description="Items waiting in the queue")
    def QueueLength(self) -> int:
        return len(self.need_logic("QueueLength").store.items)

    @attribute(dtype=str, description="The last failure of an item or of the queue")
    def LastError(self) -> str:
        return self.need_logic("LastError").last_error

    @attribute(dtype=str, description="Why the queue is not running an item (interlock, devices)")
    def BlockedBy(self) -> str:
        return self.need_logic("BlockedBy").blocked_by

    @attribute(dtype=str, description="The queued items as JSON")
    def Items(self) -> str:
        self.need_logic("Items")
        return self._items_text()

    def _items_text(self) -> str:
        with self._publish_lock:
            if self._items_version != self.store.version:
                self._items_version = self.store.version
                self._items_json = json.dumps([i.as_dict() for i in self.store.items])
            return self._items_json

    # -------------------------------------------------------------- commands
    # Every command is allowed where QUEUE_TABLE allows it (is_<command>_allowed).
    # Every JSON argument is checked once, here, against the command's schema
    # (queue/schemas.py): a bad one is refused with QUEUE_BAD_INPUT naming the
    # field, before anything changes.
    locals().update(table_checks(QUEUE_TABLE))

    def _do(self, origin: str, fn, *args) -> str:
        """Run a logic call and answer JSON; every failure a DevFailed with
        our reason: QUEUE_REJECTED (the queue refuses: an unknown macro or
        uid, bad macro arguments ...), QUEUE_STORE_ERROR (the database could
        not be written: the file, the cause, and that nothing changed)."""
        try:
            result = fn(*args)
        except QueueError as exc:
            throw("QUEUE_REJECTED", str(exc), origin)
        except StoreError as exc:
            throw("QUEUE_STORE_ERROR", str(exc), origin)
        except tango.DevFailed:
            raise
        except Exception as exc:  # a bug: say so, never a bare PyDs_PythonError
            log.exception("%s failed", origin)
            throw("QUEUE_INTERNAL_ERROR", f"{origin} failed: {type(exc).__name__}: {exc}", origin)
        return _dumps(_plain(result))

    def _edit(self, origin: str, text: str, fn, *keys: str) -> str:
        """An edit: its argument checked, its deadline from the client's
        timeout (counted from now), then ``fn(*spec[keys], deadline)``."""
        started = time.monotonic()
        spec = _argument(origin, text)
        deadline = Deadline.for_client(spec.pop("timeout", None), started)
        return self._do(origin, fn, *[spec.get(k) for k in keys], deadline)

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"macro": "ct", "args": [0.1], "repeat": 1, "meta": {}, "position": "back"}',
    )
    def Add(self, text: str) -> str:
        started = time.monotonic()
        spec = _argument("Add", text)
        deadline = Deadline.for_client(spec.pop("timeout", None), started)
        position = spec.pop("position", "back")
        return self._do("Add", self.logic.add, spec, position, deadline)

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"items": [...], "position": "back", "timeout": 3}: all or nothing, '
        "stored only if it can be answered within timeout (the client's, in s)",
    )
    def AddBatch(self, text: str) -> str:
        return self._edit("AddBatch", text, self.logic.add_batch, "items", "position")

    @command(dtype_in=str, dtype_out=str, doc_in='{"uid": "...", "args": [...], "repeat": 2, ...}')
    def Update(self, text: str) -> str:
        started = time.monotonic()
        spec = _argument("Update", text)
        deadline = Deadline.for_client(spec.pop("timeout", None), started)
        uid = spec.pop("uid")
        return self._do("Update", self.logic.update, uid, spec, deadline)

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"uid": ..., "position": "front"|"back"|index|{"before": uid}|{"after": uid}}',
    )
    def Move(self, text: str) -> str:
        return self._edit("Move", text, self.logic.move, "uid", "position")

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"uid": ..., "position": ...} or one uid: a copy of a queued, running or '
        "finished item under a new uid (default: after the original, or at the back)",
        doc_out="The new item as JSON",
    )
    def Duplicate(self, text: str) -> str:
        return self._edit("Duplicate", text, self.logic.duplicate, "uid", "position")

    @command(dtype_in=str, dtype_out=str, doc_in='{"uids": ["...", ...]}, a list or one uid')
    def Remove(self, text: str) -> str:
        return self._edit("Remove", text, self.logic.remove, "uids")

    @command(dtype_out=str, doc_out="The whole queue: state, running item, items, BlockedBy")
    def Get(self) -> str:
        return self._do("Get", self.logic.snapshot)

    @command(dtype_out=str)
    def Clear(self) -> str:
        return self._do("Clear", self.logic.clear, Deadline.for_client())

    @command
    def Start(self) -> None:
        self._do("Start", self.logic.start)

    @command(doc_in="Stop after the current item")
    def Stop(self) -> None:
        self._do("Stop", self.logic.stop)

    @command
    def StopCancel(self) -> None:
        self._do("StopCancel", self.logic.stop_cancel)

    @command(dtype_in=str, doc_in='"" or {"deferred": true} (pause after the current item)')
    def Pause(self, text: str) -> None:
        spec = _argument("Pause", text) or {}
        self._do("Pause", self.logic.pause, spec.get("deferred", False))

    @command
    def Resume(self) -> None:
        self._do("Resume", self.logic.resume)

    def _macro(self, action: str, text: str) -> str:
        spec = _argument(action, text) or {}
        return self._do(
            action,
            self.logic.macro_action,
            action.lower().replace("macro", ""),
            spec.get("timeout", 3.0),
        )

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"timeout": 3}: stop, then abort, then release, then restart Sardana',
    )
    def StopMacro(self, text: str) -> str:
        return self._macro("StopMacro", text)

    @command(
        dtype_in=str,
        dtype_out=str,
        doc_in='{"timeout": 3}: abort, then release, then restart Sardana',
    )
    def AbortMacro(self, text: str) -> str:
        return self._macro("AbortMacro", text)

    @command(dtype_in=str, dtype_out=str, doc_in='{"timeout": 3}: release, then restart Sardana')
    def HaltMacro(self, text: str) -> str:
        return self._macro("HaltMacro", text)

    @command(dtype_in=str, dtype_out=str, doc_in='"" (all) or {"limit": 100} (the newest 100)')
    def History(self, text: str) -> str:
        spec = _argument("History", text) or {}
        return self._do("History", self.store.history, spec.get("limit"))

    @command(dtype_out=str)
    def HistoryClear(self) -> str:
        return self._do("HistoryClear", self.store.clear_history)


def _argument(command: str, text: str) -> Any:
    """The command's argument checked against its schema, or QUEUE_BAD_INPUT."""
    try:
        return schemas.argument(command, text)
    except ArgumentError as exc:
        throw("QUEUE_BAD_INPUT", str(exc), command)


def _dumps(value: Any, chunk: int = 1000) -> str:
    """JSON text; a long list encoded a chunk at a time, so that the encoder
    (C code holding the GIL: 0.1 s for 20,000 items) lets other clients'
    requests in between."""
    if not isinstance(value, list) or len(value) <= chunk:
        return json.dumps(value)
    parts = [json.dumps(value[i : i + chunk])[1:-1] for i in range(0, len(value), chunk)]
    return "[" + ", ".join(parts) + "]"


def _plain(value: Any) -> Any:
    """Items and history entries as dicts, for json.dumps."""
    if isinstance(value, list):
        return [v.as_dict() if hasattr(v, "as_dict") else v for v in value]
    return value.as_dict() if hasattr(value, "as_dict") else value


def main(args=None) -> None:
    run_server((ExperimentQueue,), args)
