"""The experiment queue's logic (no tango): edits, validation, the run loop,
readiness, interlocks and reconciliation after a crash.

The Tango side injects three ports:

- ``macros``: ``checker() -> check(macro, args)``, a validator for one
  request (an item or a batch) that raises :class:`QueueError` naming the
  problem, checking in memory what it fetched once; ``needs(macro, args)``
  lists the devices an item needs.
- ``door``: ``start(args) -> run``, ``wait(run, timeout) -> run`` (run has
  ``outcome``, ``error_text``, ``ended``), ``stop()``, ``abort()``,
  ``release()``, ``pause()``, ``resume()``, ``last_status()`` and ``busy()``.
- ``health``: ``down(devices) -> [device: reason]`` and ``interlocks() -> [reason]``.

Edits are checked first (outside any lock: a 20,000-item batch takes a
second, and Get and other clients' edits go on meanwhile), then committed
under the edit lock. An edit may carry a :class:`Deadline`, from the time
its client waits for the answer: it is committed only before the deadline,
else refused with nothing changed, so a client that timed out never has its
edit stored behind its back.

A store failure (disk full ...) refuses an edit or a control with the store's
message, nothing changed. Stop, Pause and the macro actions still act (a
full disk must never keep an operator from stopping), and then say what
could not be recorded. The runner retries what it must record (the item it
starts, the outcome of the item it ran) until it can, with ``BlockedBy``
saying why it waits.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tango_devices.common.statemachine import CommandRefused, StateMachine
from tango_devices.queue import states as st
from tango_devices.queue.states import IDLE, PAUSED, QUEUE_TABLE, RUNNING, STOPPING, QueueState
from tango_devices.queue.store import HistoryEntry, Item, QueueStore, StoreError

log = logging.getLogger(__name__)

POLICIES = ("wait", "fail")
RESEND_PERIOD = 0.5  # s: a stop or abort the Door ignored is sent again
OUTCOMES = {"finish": "finished", "stop": "stopped", "abort": "aborted", "exception": "failed"}
CLIENT_TIMEOUT = 3.0  # s: what a client waits for an answer unless it says otherwise (Tango's)
COMMIT_SHARE = 2 / 3  # of a client's timeout for checking and committing; the rest is
# for the answer to reach it


class QueueError(ValueError):
    """A rejected request; the message names the problem and the fix."""


@dataclass
class Current:
    item: Item
    repetition: int = 0  # repetitions done
    started: float = 0.0
    run: Any = None
    drop_rest: str = ""  # why the remaining repetitions are dropped


@dataclass(frozen=True)
class Deadline:
    """When an edit must be committed by (``time.monotonic()``) for its client,
    waiting ``timeout`` seconds, to get the answer in time."""

    at: float
    timeout: float

    @classmethod
    def for_client(cls, timeout: float | None = None, started: float | None = None) -> Deadline:
        timeout = timeout or CLIENT_TIMEOUT
        start = time.monotonic() if started is None else started
        return cls(start + timeout * COMMIT_SHARE, timeout)

    def left(self) -> float:
        return self.at - time.monotonic()

    def refusal(self, why: str = "") -> QueueError:
        return QueueError(
            f"nothing was changed: the edit could not be committed within "
            f"{self.timeout * COMMIT_SHARE:.1f} s{why}, and its client, waiting "
            f"{self.timeout:g} s for the answer, would have timed out before it. Try again; "
            'for a very large batch give a longer "timeout" (and the client the same)'
        )


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
    for n, a in enumerate(args):
        if isinstance(a, float) and not math.isfinite(a):
            raise QueueError(f"{where}: args.{n}: {a!r} is not a finite number")
    repeat = spec.get("repeat", 1)
    if isinstance(repeat, float) and repeat.is_integer():
        repeat = int(repeat)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= 10_000:
        raise QueueError(f"{where}: 'repeat' must be an integer from 1 to 10000, not {repeat!r}")
    uid = spec.get("uid", "")
    if not isinstance(uid, str):
        raise QueueError(f"{where}: 'uid' must be a string (a uid is text), not {uid!r}")
    meta = spec.get("meta", {})
    if not isinstance(meta, dict):
        raise QueueError(f"{where}: 'meta' must be an object")
    policy = meta.get("on_device_down", "wait")
    if policy not in POLICIES:
        raise QueueError(f"{where}: meta.on_device_down must be one of {POLICIES}, not {policy!r}")
    return Item(macro.strip(), [str(a) for a in args], repeat, meta, uid)


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
        self._lock = threading.RLock()  # state, current item: held briefly
        self._edit_lock = threading.Lock()  # edits, one after another, while they commit
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
    @staticmethod
    def _position(position: Any, items: list[Item]) -> int:
        """The index in ``items`` that ``position`` names."""
        n = len(items)
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
                for i, item in enumerate(items):
                    if item.uid == uid:
                        return i if how == "before" else i + 1
                raise QueueError(f"no item with uid {uid!r} in the queue")
        raise QueueError(
            f"position {position!r}: use 'front', 'back', an index, "
            "{'before': uid} or {'after': uid}"
        )

    def _where(self, position: Any) -> Callable[[list[Item]], int]:
        """``position`` resolved by the store against the queue as it is when
        the edit commits (the runner may have taken an item off meanwhile);
        a position that can never be valid is refused at once."""
        self._position(position, self.store.items)
        return lambda items: self._position(position, items)

    @contextlib.contextmanager
    def _editing(self, deadline: Deadline | None) -> Iterator[float | None]:
        """Edits commit one after another; past its deadline an edit is
        refused, nothing changed (also while it waits for another edit)."""
        wait = -1 if deadline is None else max(0.0, deadline.left())
        if not self._edit_lock.acquire(timeout=wait):
            raise deadline.refusal(" (another edit was being committed)")
        try:
            if deadline is not None and deadline.left() <= 0:
                raise deadline.refusal()
            yield None if deadline is None else deadline.at
        except TimeoutError:
            raise deadline.refusal() from None
        finally:
            self._edit_lock.release()
        self._changed()

    def _validated(self, spec: Any, where: str, check: Callable[[str, list[str]], None]) -> Item:
        item = _item_from(spec, where)
        try:
            check(item.macro, item.args)
        except QueueError as exc:
            raise QueueError(f"{where}: {exc}") from None
        return item

    def _insert(self, items: list[Item], position: Any, deadline: Deadline | None) -> None:
        where = self._where(position)
        with self._editing(deadline) as at:
            try:
                self.store.insert(items, where, deadline=at)
            except ValueError as exc:  # a uid already queued (QueueError is one too)
                if isinstance(exc, QueueError):
                    raise
                raise QueueError(
                    f"{exc}: every item needs its own uid; nothing was added"
                ) from None

    def add(self, spec: Any, position: Any = "back", deadline: Deadline | None = None) -> Item:
        item = self._validated(spec, "item", self.macros.checker())
        self._insert([item], position, deadline)
        return item

    def add_batch(
        self, specs: Any, position: Any = "back", deadline: Deadline | None = None
    ) -> list[Item]:
        """All or nothing: one bad item rejects the batch and changes nothing.
        The items are checked before the edit lock is taken: the queue
        answers meanwhile."""
        if not isinstance(specs, list) or not specs:
            raise QueueError("a batch is a non-empty list of items")
        check = self.macros.checker()
        items = []
        for n, spec in enumerate(specs):
            if deadline is not None and n % 1000 == 999 and deadline.left() <= 0:
                raise deadline.refusal()  # no use checking the rest
            items.append(self._validated(spec, f"item {n}", check))
        self._insert(items, position, deadline)
        return items

    def update(self, uid: str, spec: Any, deadline: Deadline | None = None) -> Item:
        if not isinstance(spec, dict):
            raise QueueError("an update is an object with the fields to change")
        try:
            old = self.store.get(uid)
        except KeyError as exc:
            raise QueueError(f"{exc.args[0]}; a running item cannot be edited") from None
        merged = {**old.as_dict(), **spec}
        merged.pop("added", None)
        merged["uid"] = uid
        item = self._validated(merged, f"item {uid}", self.macros.checker())
        with self._editing(deadline) as at:
            try:
                current = self.store.get(uid)
            except KeyError as exc:
                raise QueueError(f"{exc.args[0]}; a running item cannot be edited") from None
            if current is not old:
                raise QueueError(
                    f"item {uid} was changed meanwhile; nothing was changed: try again"
                )
            self.store.update(item, deadline=at)
        return item

    def duplicate(self, uid: str, position: Any = None, deadline: Deadline | None = None) -> Item:
        """A copy of an item under a new uid, checked like a new one. The item
        may be queued (the copy goes right after it), running or in the
        history (the copy goes to the back); ``position`` overrides."""
        with self._lock:
            running = self.current.item if self.current is not None else None
        queued = next((i for i in self.store.items if i.uid == uid), None)
        if queued is not None:
            source: Any = queued
        elif running is not None and running.uid == uid:
            source = running
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
        item = self._validated(spec, f"copy of {uid}", self.macros.checker())
        if position is None:
            # right after the original, wherever it is when the copy commits
            position = {"after": uid} if queued is not None else "back"
        self._insert([item], position, deadline)
        return item

    def move(self, uid: str, position: Any, deadline: Deadline | None = None) -> None:
        try:
            self.store.index(uid)
        except KeyError as exc:
            raise QueueError(str(exc.args[0])) from None
        self._where(position)

        def target(items: list[Item]) -> int:
            at = self._position(position, items)
            here = next((i for i, item in enumerate(items) if item.uid == uid), None)
            if here is None:
                raise QueueError(f"no item with uid {uid!r} in the queue (it started meanwhile)")
            return at - 1 if at > here else at  # the positions named counted the item itself

        with self._editing(deadline) as at:
            try:
                self.store.move(uid, target, deadline=at)
            except KeyError as exc:
                raise QueueError(str(exc.args[0])) from None

    def remove(self, uids: list[str], deadline: Deadline | None = None) -> list[Item]:
        with self._editing(deadline) as at:
            try:
                removed = self.store.remove(uids, deadline=at)
            except KeyError as exc:
                raise QueueError(f"{exc.args[0]}; nothing was removed") from None
        return removed

    def clear(self, deadline: Deadline | None = None) -> int:
        with self._editing(deadline) as at:
            n = self.store.clear(deadline=at)
        return n

    # ------------------------------------------------------------- controls
    def start(self) -> None:
        with self._lock:
            self.require("Start")
            self.store.set_meta("running", True)  # recorded first: refused, nothing changed
            self._fire(st.START)
            self.last_error = ""
        self._changed()
        self._wake.set()

    def stop(self) -> None:
        """Stop after the current item (at once when nothing runs). Takes effect
        even when it cannot be recorded (then says so)."""
        with self._lock:
            self.require("Stop")
            failure = self._try_record(running=False)
            if self.state != PAUSED:  # paused stays paused; Resume ends the item
                self._fire(st.STOP_AFTER_ITEM if self.current else st.WENT_IDLE)
            now = self.state
        self._changed()
        self._unrecorded(failure, f"Stop took effect (the queue is {now})", "run again")

    def stop_cancel(self) -> None:
        with self._lock:
            self.require("StopCancel")
            self.store.set_meta("running", True)
            self._fire(st.CANCEL_STOP)
        self._changed()

    def pause(self, deferred: bool = False) -> None:
        """Immediate: pause the running macro at its next check point.
        Deferred: pause after the current item. An immediate pause takes
        effect even when it cannot be recorded (then says so)."""
        failure = None
        with self._lock:
            self.require("Pause")
            if deferred:
                self._pause_deferred = True
            else:
                self._resumed.clear()
                failure = self._try_record(paused=True)
                self._fire(st.PAUSE)  # no new item or repetition starts from now
                pause_macro = self.current is not None
        self._changed()
        if not deferred and pause_macro:
            try:
                self.door.pause()
            except QueueError:
                if self.door.busy():
                    raise  # still running and not paused: say so
                # the macro ended meanwhile: the queue is paused between items
        self._unrecorded(failure, "Pause took effect (the queue is paused)", "not be paused")

    def resume(self) -> None:
        with self._lock:
            self.require("Resume")
            if self.state != PAUSED and not self._pause_deferred:
                raise QueueError(f"the queue is not paused (it is {self.state})")
            if self.state == PAUSED:
                self.store.set_meta("paused", False)  # first: refused, nothing changed
                if self.current is not None and self.door.busy():
                    try:
                        self.door.resume()
                    except QueueError:
                        self._try_record(paused=True)
                        raise
                running = self.store.get_meta("running", False)
                self._fire(
                    st.RESUME_RUNNING
                    if running
                    else (st.RESUME_STOPPING if self.current else st.RESUME_IDLE)
                )
            self._pause_deferred = False
            self._resumed.set()
        self._changed()
        self._wake.set()

    def macro_action(self, action: str, timeout: float = 3.0) -> str:
        """stop, abort or halt the running macro, escalating: stop, then abort,
        then release, each given ``timeout`` seconds, and as the last step (an
        abort that hangs in Sardana) a restart of the Door's server through
        the supervisor: the Door is always left ready. Acts even when the
        queue cannot record that it stopped (then says so)."""
        chain = {
            "stop": ("stop", "abort", "release", "restart"),
            "abort": ("abort", "release", "restart"),
            "halt": ("release", "restart"),
        }.get(action)
        if chain is None:
            raise QueueError(f"unknown action {action!r}: stop, abort or halt")
        with self._lock:
            self.require(f"{action.capitalize()}Macro")
            if self.current is None:
                raise QueueError("no macro is running")
            failure = self._try_record(running=False, paused=False)
            self._fire(st.WENT_IDLE)
            self._resumed.set()
        for step in chain:
            deadline = time.monotonic() + timeout
            sent = False
            while True:
                # Sardana ignores StopMacro/AbortMacro sent before the macro has
                # really started: ask again until it ends or the step's time is
                # up (a restart is asked for once)
                if not (sent and step == "restart"):
                    getattr(self.door, step)()
                    sent = True
                again = min(deadline, time.monotonic() + RESEND_PERIOD)
                while time.monotonic() < again:
                    if not self.door.busy():
                        self._changed()
                        self._unrecorded(
                            failure,
                            f"the macro ended after {step} and the queue is idle",
                            "run again",
                        )
                        return step
                    time.sleep(0.02)
                if time.monotonic() >= deadline:
                    break
        raise QueueError(f"the macro did not end after {' then '.join(chain)}")

    def _try_record(self, **values: Any) -> StoreError | None:
        """Record the queue's flags (one transaction); the failure, if any."""
        try:
            self.store.set_metas(values)
        except StoreError as exc:
            return exc
        return None

    @staticmethod
    def _unrecorded(failure: StoreError | None, done: str, after_restart: str) -> None:
        if failure is not None:
            raise StoreError(
                f"{done}, but that could not be recorded: {failure.problem}; after a restart "
                f"the queue would {after_restart}",
                failure.fix,
            )

    # -------------------------------------------------------------- queries
    def snapshot(self, items: bool = True) -> dict[str, Any]:
        queued = self.store.items  # replaced, never changed in place: one consistent queue
        with self._lock:
            cur = self.current
            snap = {
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
                "items": None,
                "length": len(queued),
            }
        if items:  # outside the lock: 20,000 items take 50 ms
            snap["items"] = [i.as_dict() for i in queued]
        return snap

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

    def _unrecorded_step(self, failure: StoreError | None) -> bool:
        """Say (BlockedBy, LastError) that the runner could not record a step;
        True if so."""
        if failure is None:
            return False
        self.last_error = f"queue runner: {failure}"
        self._set_blocked(f"cannot record the queue's progress: {failure.problem}; retrying")
        return True

    def _persist(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A write the runner cannot go on without (the item it starts, the
        outcome of the item it ran): retried until it works (a full disk: until
        space is freed), with BlockedBy saying why the queue waits."""
        while True:
            try:
                result = fn(*args)
            except StoreError as exc:
                self._unrecorded_step(exc)
                if self._stop_thread.wait(self.hold_period):
                    raise
                continue
            if self.blocked_by.startswith("cannot record"):
                self._set_blocked("")
            return result

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
                failure = self._try_record(paused=True)
                if failure is None:
                    self._pause_deferred = False
                    self._fire(st.PAUSE)
            self._unrecorded_step(failure)  # if so, tried again in a moment
            self._changed()
            return False
        active = self.health.interlocks()
        if active:
            self._set_blocked("interlock: " + "; ".join(active))
            return False
        if not self.store.items:
            with self._lock:
                failure = self._try_record(running=False)
                if failure is None:
                    self._fire(st.WENT_IDLE)
            if self._unrecorded_step(failure):
                return False  # tried again in a moment
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
                self._persist(
                    self.store.pop_to_current, item.uid, {"uid": item.uid, "item": item.as_dict()}
                )
                self._persist(
                    self.store.finish_current,
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
                    ),
                )
                self._changed()
                continue
            waiting.append(f"{item.uid} ({item.line}) waits for {reason}")
        return None, waiting

    def _run_item(self, item: Item) -> None:
        started = time.time()
        current = Current(item, 0, started)
        self._persist(
            self.store.pop_to_current,
            item.uid,
            {"uid": item.uid, "item": item.as_dict(), "started": started, "rep": 0},
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
            self._persist(
                self.store.set_meta,
                "current",
                {
                    "uid": item.uid,
                    "item": item.as_dict(),
                    "started": started,
                    "rep": current.repetition,
                    "door_started": time.time(),
                },
            )
            if self.state == IDLE and not current.repetition:
                # stopped (StopMacro ...) while the record waited for the disk
                outcome, error = "stopped", "stopped before its macro started"
                break
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
        self._persist(
            self.store.finish_current,
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
            ),
        )
        stopped = outcome in ("stopped", "aborted", "lost")
        if stopped:
            self._persist(self.store.set_meta, "running", False)
        with self._lock:
            self.current = None
            if outcome != "finished":
                self.last_error = f"{item.uid} ({item.line}): {outcome}: {error}"
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
