"""The experiment queue's logic (no tango): edits, validation, the run loop,
readiness, interlocks and reconciliation after a crash.

The Tango side injects three ports:

- ``macros``: ``validate(macro, args)`` raises :class:`QueueError` naming the
  problem; ``needs(macro, args)`` lists the devices an item needs.
- ``door``: ``start(args) -> run``, ``wait(run, timeout) -> run`` (run has
  ``outcome``, ``error_text``, ``ended``), ``stop()``, ``abort()``,
  ``release()``, ``pause()``, ``resume()``, ``last_status()`` and ``busy()``.
- ``health``: ``down(devices) -> [device: reason]`` and ``interlocks() -> [reason]``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tango_devices.common.statemachine import CommandRefused, StateMachine
from tango_devices.queue import states as st
from tango_devices.queue.states import IDLE, PAUSED, QUEUE_TABLE, RUNNING, STOPPING, QueueState
from tango_devices.queue.store import HistoryEntry, Item, QueueStore

log = logging.getLogger(__name__)

POLICIES = ("wait", "fail")
RESEND_PERIOD = 0.5  # s: a stop or abort the Door ignored is sent again
OUTCOMES = {"finish": "finished", "stop": "stopped", "abort": "aborted", "exception": "failed"}


class QueueError(ValueError):
    """A rejected request; the message names the problem and the fix."""


@dataclass
class Current:
    item: Item
    repetition: int = 0  # repetitions done
    started: float = 0.0
    run: Any = None
    drop_rest: str = ""  # why the remaining repetitions are dropped


def _item_from(spec: Any, where: str) -> Item:
    if not isinstance(spec, dict):
        raise QueueError(f"{where}: an item is an object like {{'macro': 'ct', 'args': [0.1]}}")
    unknown = set(spec) - {"macro", "args", "repeat", "meta", "uid"}
    if unknown:
        raise QueueError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
            "an item has macro, args, repeat, meta"
        )
    macro = spec.get("macro")
    if not isinstance(macro, str) or not macro.strip():
        raise QueueError(f"{where}: 'macro' must be a macro name, e.g. 'ascan'")
    args = spec.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str | int | float) for a in args):
        raise QueueError(f"{where}: 'args' must be a list of numbers and strings")
    repeat = spec.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= 10_000:
        raise QueueError(f"{where}: 'repeat' must be an integer from 1 to 10000, not {repeat!r}")
    meta = spec.get("meta", {})
    if not isinstance(meta, dict):
        raise QueueError(f"{where}: 'meta' must be an object")
    policy = meta.get("on_device_down", "wait")
    if policy not in POLICIES:
        raise QueueError(f"{where}: meta.on_device_down must be one of {POLICIES}, not {policy!r}")
    return Item(macro.strip(), [str(a) for a in args], repeat, meta, spec.get("uid", ""))


class QueueLogic:
    """The queue's behaviour. Its state follows :data:`QUEUE_TABLE`: every
    change is a trigger of the table, fired here and nowhere else."""

    def __init__(
        self,
        store: QueueStore,
        macros,
        door,
        health,
        on_change: Callable[[], None] = lambda: None,
        readiness_timeout: float = 2.0,
        hold_period: float = 0.5,
    ) -> None:
        self.store = store
        self.macros = macros
        self.door = door
        self.health = health
        self.on_change = on_change
        self.readiness_timeout = readiness_timeout
        self.hold_period = hold_period
        # changes are reported through on_change (outside the locks), not the
        # machine's listeners
        self.machine = StateMachine(QUEUE_TABLE, "Queue idle")
        self.blocked_by = ""
        self.last_error = ""
        self.current: Current | None = None
        self._pause_deferred = False
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop_thread = threading.Event()
        self._thread: threading.Thread | None = None
        self._resumed = threading.Event()
        self.reconciled = threading.Event()  # set once an interrupted item is dealt with

    # ---------------------------------------------------------------- state
    @property
    def state(self) -> QueueState:
        return self.machine.state

    def _fire(self, trigger: str) -> None:
        self.machine.fire(trigger, notify=False)

    def require(self, command: str) -> None:
        """Refuse ``command`` if the queue's table does not allow it now (the
        same text the device's is_*_allowed gives)."""
        try:
            self.machine.check(command)
        except CommandRefused as exc:
            raise QueueError(str(exc)) from None

    # ------------------------------------------------------------ lifecycle
    def open(self) -> None:
        """Serve at once; the runner thread first reconciles an item a previous
        process was running (that may mean waiting for its macro to end: the
        device must answer meanwhile, or the supervisor would think it hung)."""
        if self.store.get_meta("paused", False):
            self._fire(st.RESTORE_PAUSED)
        elif self.store.get_meta("running", False):
            self._fire(st.START)
        self._thread = threading.Thread(target=self._serve, name="queue-runner", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._reconcile()
        except Exception as exc:
            log.exception("reconciling the interrupted item failed")
            self.last_error = f"reconciling the interrupted item failed: {exc}"
        self.reconciled.set()
        self._changed()
        self._loop()

    def close(self) -> None:
        self._stop_thread.set()
        self._wake.set()
        self._resumed.set()
        if self._thread:
            self._thread.join(5)

    # ---------------------------------------------------------------- edits
    def _position(self, position: Any) -> int:
        n = len(self.store.items)
        if position in (None, "back"):
            return n
        if position == "front":
            return 0
        if isinstance(position, int) and not isinstance(position, bool):
            if not -n - 1 <= position <= n:
                raise QueueError(f"index {position} is outside the queue (length {n})")
            return position if position >= 0 else n + 1 + position
        if isinstance(position, dict) and len(position) == 1:
            ((how, uid),) = position.items()
            if how in ("before", "after"):
                try:
                    i = self.store.index(str(uid))
                except KeyError as exc:
                    raise QueueError(str(exc.args[0])) from None
                return i if how == "before" else i + 1
        raise QueueError(
            f"position {position!r}: use 'front', 'back', an index, "
            "{'before': uid} or {'after': uid}"
        )

    def _validated(self, spec: Any, where: str) -> Item:
        item = _item_from(spec, where)
        try:
            self.macros.validate(item.macro, item.args)
        except QueueError as exc:
            raise QueueError(f"{where}: {exc}") from None
        return item

    def add(self, spec: Any, position: Any = "back") -> Item:
        with self._lock:
            item = self._validated(spec, "item")
            self.store.insert([item], self._position(position))
        self._changed()
        return item

    def add_batch(self, specs: Any, position: Any = "back") -> list[Item]:
        """All or nothing: one bad item rejects the batch and changes nothing."""
        if not isinstance(specs, list) or not specs:
            raise QueueError("a batch is a non-empty list of items")
        with self._lock:
            items = [self._validated(s, f"item {n}") for n, s in enumerate(specs)]
            self.store.insert(items, self._position(position))
        self._changed()
        return items

    def update(self, uid: str, spec: Any) -> Item:
        with self._lock:
            try:
                old = self.store.get(uid)
            except KeyError as exc:
                raise QueueError(f"{exc.args[0]}; a running item cannot be edited") from None
            merged = {**old.as_dict(), **(spec if isinstance(spec, dict) else {})}
            merged.pop("added", None)
            merged["uid"] = uid
            if not isinstance(spec, dict):
                raise QueueError("an update is an object with the fields to change")
            item = self._validated(merged, f"item {uid}")
            self.store.update(item)
        self._changed()
        return item

    def duplicate(self, uid: str, position: Any = None) -> Item:
        """A copy of an item under a new uid, checked like a new one. The item
        may be queued (the copy goes right after it), running or in the
        history (the copy goes to the back); ``position`` overrides."""
        with self._lock:
            queued = any(i.uid == uid for i in self.store.items)
            if queued:
                source: Any = self.store.get(uid)
            elif self.current is not None and self.current.item.uid == uid:
                source = self.current.item
            else:
                source = self.store.history_entry(uid)
                if source is None:
                    raise QueueError(f"no item with uid {uid!r} in the queue or its history")
            spec = {
                "macro": source.macro,
                "args": list(source.args),
                "repeat": source.repeat,
                "meta": dict(source.meta),
            }
            item = self._validated(spec, f"copy of {uid}")
            if position is None:
                position = {"after": uid} if queued else "back"
            self.store.insert([item], self._position(position))
        self._changed()
        return item

    def move(self, uid: str, position: Any) -> None:
        with self._lock:
            try:
                self.store.index(uid)
            except KeyError as exc:
                raise QueueError(str(exc.args[0])) from None
            target = self._position(position)
            if target > self.store.index(uid):
                target -= 1  # the positions named counted the item itself
            self.store.move(uid, target)
        self._changed()

    def remove(self, uids: list[str]) -> list[Item]:
        with self._lock:
            try:
                removed = self.store.remove(uids)
            except KeyError as exc:
                raise QueueError(f"{exc.args[0]}; nothing was removed") from None
        self._changed()
        return removed

    def clear(self) -> int:
        with self._lock:
            n = self.store.clear()
        self._changed()
        return n

    # ------------------------------------------------------------- controls
    def start(self) -> None:
        with self._lock:
            self.require("Start")
            self._fire(st.START)
            self.store.set_meta("running", True)
            self.last_error = ""
        self._changed()
        self._wake.set()

    def stop(self) -> None:
        """Stop after the current item (at once when nothing runs)."""
        with self._lock:
            self.require("Stop")
            self.store.set_meta("running", False)
            if self.state != PAUSED:  # paused stays paused; Resume ends the item
                self._fire(st.STOP_AFTER_ITEM if self.current else st.WENT_IDLE)
        self._changed()

    def stop_cancel(self) -> None:
        with self._lock:
            self.require("StopCancel")
            self._fire(st.CANCEL_STOP)
            self.store.set_meta("running", True)
        self._changed()

    def pause(self, deferred: bool = False) -> None:
        """Immediate: pause the running macro at its next check point.
        Deferred: pause after the current item."""
        with self._lock:
            self.require("Pause")
            if deferred:
                self._pause_deferred = True
            else:
                self._resumed.clear()
                self._fire(st.PAUSE)  # no new item or repetition starts from now
                self.store.set_meta("paused", True)
                pause_macro = self.current is not None
        self._changed()
        if not deferred and pause_macro:
            try:
                self.door.pause()
            except QueueError:
                if self.door.busy():
                    raise  # still running and not paused: say so
                # the macro ended meanwhile: the queue is paused between items

    def resume(self) -> None:
        with self._lock:
            self.require("Resume")
            if self.state != PAUSED and not self._pause_deferred:
                raise QueueError(f"the queue is not paused (it is {self.state})")
            self._pause_deferred = False
            if self.state == PAUSED:
                if self.current is not None and self.door.busy():
                    self.door.resume()
                running = self.store.get_meta("running", False)
                self._fire(
                    st.RESUME_RUNNING
                    if running
                    else (st.RESUME_STOPPING if self.current else st.RESUME_IDLE)
                )
                self.store.set_meta("paused", False)
            self._resumed.set()
        self._changed()
        self._wake.set()

    def macro_action(self, action: str, timeout: float = 3.0) -> str:
        """stop, abort or halt the running macro, escalating: stop, then abort,
        then release, each given ``timeout`` seconds."""
        chain = {"stop": ("stop", "abort", "release"), "abort": ("abort", "release")}.get(
            action, ("release",) if action == "halt" else None
        )
        if chain is None:
            raise QueueError(f"unknown action {action!r}: stop, abort or halt")
        with self._lock:
            self.require(f"{action.capitalize()}Macro")
            if self.current is None:
                raise QueueError("no macro is running")
            self.store.set_meta("running", False)
            self.store.set_meta("paused", False)
            self._fire(st.WENT_IDLE)
            self._resumed.set()
        for step in chain:
            deadline = time.monotonic() + timeout
            while True:
                # Sardana ignores StopMacro/AbortMacro sent before the macro has
                # really started: ask again until it ends or the step's time is up
                getattr(self.door, step)()
                again = min(deadline, time.monotonic() + RESEND_PERIOD)
                while time.monotonic() < again:
                    if not self.door.busy():
                        self._changed()
                        return step
                    time.sleep(0.02)
                if time.monotonic() >= deadline:
                    break
        raise QueueError(f"the macro did not end after {' then '.join(chain)}")

    # -------------------------------------------------------------- queries
    def snapshot(self, items: bool = True) -> dict[str, Any]:
        with self._lock:
            cur = self.current
            return {
                "state": self.state,
                "blocked_by": self.blocked_by,
                "last_error": self.last_error,
                "pause_deferred": self._pause_deferred,
                "running": (
                    {
                        **cur.item.as_dict(),
                        "repetition": cur.repetition + 1,
                        "started": cur.started,
                        "progress": getattr(cur.run, "step", 0.0) if cur.run else 0.0,
                    }
                    if cur
                    else None
                ),
                "items": [i.as_dict() for i in self.store.items] if items else None,
                "length": len(self.store.items),
            }

    # ------------------------------------------------------------- the loop
    def _changed(self) -> None:
        try:
            self.on_change()
        except Exception:  # a listener's trouble never stops the queue
            log.exception("queue change listener failed")

    def _set_blocked(self, text: str) -> None:
        if text != self.blocked_by:
            self.blocked_by = text
            self._changed()

    def _loop(self) -> None:
        while not self._stop_thread.is_set():
            try:
                ran = self._step()
            except Exception as exc:  # keep serving; report
                log.exception("queue step failed")
                self.last_error = f"queue runner: {exc}"
                self._changed()
                ran = False
            if not ran:
                self._wake.wait(self.hold_period)
                self._wake.clear()

    def _step(self) -> bool:
        """Run one item if the queue may; True if something ran."""
        if self.state != RUNNING:
            self._set_blocked("")
            return False
        if self._pause_deferred:
            with self._lock:
                self._pause_deferred = False
                self._fire(st.PAUSE)
                self.store.set_meta("paused", True)
            self._changed()
            return False
        active = self.health.interlocks()
        if active:
            self._set_blocked("interlock: " + "; ".join(active))
            return False
        if not self.store.items:
            with self._lock:
                self._fire(st.WENT_IDLE)
                self.store.set_meta("running", False)
            self._set_blocked("")
            self._changed()
            return False
        chosen, waiting = self._choose()
        if chosen is None:
            self._set_blocked("; ".join(waiting))
            return False
        self._set_blocked("")
        self._run_item(chosen)
        return True

    def _choose(self) -> tuple[Item | None, list[str]]:
        """The first item whose devices answer; items that fail by policy go to
        history; items that wait by policy stay (later items may pass them)."""
        waiting = []
        for item in list(self.store.items):
            needs = self.macros.needs(item.macro, item.args)
            down = self.health.down(needs) if needs else []
            if not down:
                return item, waiting
            reason = "; ".join(down)
            if item.meta.get("on_device_down", "wait") == "fail":
                now = time.time()
                self.store.pop_to_current(item.uid, {"uid": item.uid, "item": item.as_dict()})
                self.store.finish_current(
                    HistoryEntry(
                        item.uid,
                        item.macro,
                        item.args,
                        item.repeat,
                        0,
                        "failed",
                        f"not started: {reason}",
                        None,
                        now,
                        item.meta,
                    )
                )
                self._changed()
                continue
            waiting.append(f"{item.uid} ({item.line}) waits for {reason}")
        return None, waiting

    def _run_item(self, item: Item) -> None:
        started = time.time()
        current = Current(item, 0, started)
        self.store.pop_to_current(
            item.uid, {"uid": item.uid, "item": item.as_dict(), "started": started, "rep": 0}
        )
        with self._lock:
            self.current = current
        self._changed()
        outcome, error = "finished", ""
        while current.repetition < item.repeat:
            if self.state == PAUSED:
                self._resumed.wait()
            if current.repetition and (
                self.state == IDLE or self._stop_thread.is_set()
            ):  # aborted or stopped while paused between repetitions
                current.drop_rest = "the queue was stopped"
                break
            # recorded *before* RunMacro: a crash in between is reconciled with
            # the Door (unknown at worst), never run a second time
            self.store.set_meta(
                "current",
                {
                    "uid": item.uid,
                    "item": item.as_dict(),
                    "started": started,
                    "rep": current.repetition,
                    "door_started": time.time(),
                },
            )
            try:
                run = self.door.start([item.macro, *item.args])
            except Exception as exc:
                outcome, error = "failed", f"not started: {exc}"
                break
            current.run = run
            self._changed()
            self.door.wait(run)
            result = OUTCOMES.get(run.outcome, run.outcome)
            if result != "finished":
                outcome, error = result, run.error_text
                break
            current.repetition += 1
            self._changed()
            if current.repetition < item.repeat:
                active = self.health.interlocks()
                if active:
                    current.drop_rest = "interlock: " + "; ".join(active)
                    break
            if self.state in (IDLE,) and not self.store.get_meta("running", False):
                if current.repetition < item.repeat:
                    current.drop_rest = "the queue was stopped"
                break
        if current.drop_rest:
            error = f"remaining {item.repeat - current.repetition} repetition(s) dropped: " + (
                current.drop_rest
            )
        self.store.finish_current(
            HistoryEntry(
                item.uid,
                item.macro,
                item.args,
                item.repeat,
                current.repetition,
                outcome,
                error,
                started,
                time.time(),
                item.meta,
            )
        )
        with self._lock:
            self.current = None
            if outcome != "finished":
                self.last_error = f"{item.uid} ({item.line}): {outcome}: {error}"
            stopped = outcome in ("stopped", "aborted", "lost")
            if stopped:
                self.store.set_meta("running", False)
            if stopped or self.state == STOPPING:
                self._fire(st.WENT_IDLE)
        self._changed()

    # -------------------------------------------------------- reconciliation
    def _reconcile(self) -> None:
        """An item recorded as current by a process that died: find out from the
        Door what became of it; never run it again."""
        cur = self.store.get_meta("current")
        if not cur:
            return
        item = Item(**{k: v for k, v in cur["item"].items()})
        started = cur.get("started")
        door_started = cur.get("door_started")
        done = int(cur.get("rep", 0))
        if door_started is None:
            # taken off the queue but its macro never started: put it back first
            self.store.requeue_current(item)
            return
        verdict = self.door.reconcile(item.macro, door_started)
        if verdict.outcome == "running":
            run = verdict.run
            self.door.wait(run)
            verdict = run
        outcome = OUTCOMES.get(verdict.outcome, verdict.outcome)
        reps = done + (1 if outcome == "finished" else 0)
        note = "reconciled after a restart of the queue: "
        error = note + (verdict.error_text or outcome)
        if reps < item.repeat and outcome == "finished":
            error = note + f"{item.repeat - reps} repetition(s) not run"
        recorded = outcome if outcome in ("finished", "failed", "stopped", "aborted") else "unknown"
        self.store.finish_current(
            HistoryEntry(
                item.uid,
                item.macro,
                item.args,
                item.repeat,
                reps,
                recorded,
                error,
                started,
                time.time(),
                item.meta,
            )
        )
        if recorded != "finished":
            # like an item lost while the queue ran: an operator decides what next
            self.store.set_meta("running", False)
            with self._lock:
                if self.state != PAUSED:
                    self._fire(st.WENT_IDLE)
            self.last_error = f"{item.uid} ({item.line}): {recorded}: {error}"
