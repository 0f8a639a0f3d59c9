"""The experiment queue's persistence: SQLite in WAL mode (no tango).

Every edit is one transaction, committed before the command that asked for it
returns: a kill -9 at any moment leaves either the queue before the edit or
the queue after it. Three tables:

- ``items``: the queue, in order (``pos``), each item a macro with its
  arguments, a repeat count, metadata and a uid;
- ``history``: what ran (outcome, times, error, repetitions done);
- ``meta``: small JSON values, among them ``current``, the item being run
  (written before its macro starts, so a restarted queue can reconcile it).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    uid TEXT PRIMARY KEY,
    pos INTEGER NOT NULL,
    macro TEXT NOT NULL,
    args TEXT NOT NULL,
    repeat INTEGER NOT NULL,
    meta TEXT NOT NULL,
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_pos ON items(pos);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL,
    macro TEXT NOT NULL,
    args TEXT NOT NULL,
    repeat INTEGER NOT NULL,
    repetitions_done INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT NOT NULL,
    started REAL,
    ended REAL,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class Item:
    macro: str
    args: list[str] = field(default_factory=list)
    repeat: int = 1
    meta: dict[str, Any] = field(default_factory=dict)
    uid: str = ""
    added: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def line(self) -> str:
        return " ".join([self.macro, *self.args])


@dataclass
class HistoryEntry:
    uid: str
    macro: str
    args: list[str]
    repeat: int
    repetitions_done: int
    outcome: str  # finish | failed | stopped | aborted | lost | unknown | skipped
    error: str
    started: float | None
    ended: float | None
    meta: dict[str, Any]
    id: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_uid() -> str:
    return uuid.uuid4().hex[:12]


class QueueStore:
    """The queue in memory (fast reads) mirrored in SQLite (every edit committed)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.RLock()
        self.version = 0  # bumped at every change of the item list
        self.items: list[Item] = [
            Item(macro, json.loads(args), repeat, json.loads(meta), uid, added)
            for uid, macro, args, repeat, meta, added in self._db.execute(
                "SELECT uid, macro, args, repeat, meta, added FROM items ORDER BY pos"
            )
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -------------------------------------------------------------- reads
    def get(self, uid: str) -> Item:
        for item in self.items:
            if item.uid == uid:
                return item
        raise KeyError(f"no item with uid {uid!r} in the queue")

    def index(self, uid: str) -> int:
        for i, item in enumerate(self.items):
            if item.uid == uid:
                return i
        raise KeyError(f"no item with uid {uid!r} in the queue")

    # -------------------------------------------------------------- edits
    def _transaction(self, new_items: list[Item], changed: list[Item], removed: list[str]):
        """Persist a new order (and changed/removed items) in one transaction,
        then adopt it in memory."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                if removed:
                    cur.executemany("DELETE FROM items WHERE uid = ?", [(u,) for u in removed])
                if changed:
                    cur.executemany(
                        "INSERT OR REPLACE INTO items (uid, pos, macro, args, repeat, meta, added) "
                        "VALUES (?, 0, ?, ?, ?, ?, ?)",
                        [
                            (
                                i.uid,
                                i.macro,
                                json.dumps(i.args),
                                i.repeat,
                                json.dumps(i.meta),
                                i.added,
                            )
                            for i in changed
                        ],
                    )
                cur.executemany(
                    "UPDATE items SET pos = ? WHERE uid = ?",
                    [(n, i.uid) for n, i in enumerate(new_items)],
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self.items = new_items
            self.version += 1

    def insert(self, items: list[Item], index: int) -> list[Item]:
        now = time.time()
        for item in items:
            item.uid = item.uid or new_uid()
            item.added = item.added or now
        known = {i.uid for i in self.items}
        dup = [i.uid for i in items if i.uid in known]
        if dup or len({i.uid for i in items}) != len(items):
            raise ValueError(f"duplicate uid(s): {', '.join(dup) or 'within the batch'}")
        index = max(0, min(index, len(self.items)))
        new = self.items[:index] + items + self.items[index:]
        self._transaction(new, items, [])
        return items

    def update(self, item: Item) -> None:
        index = self.index(item.uid)
        new = list(self.items)
        item.added = new[index].added
        new[index] = item
        self._transaction(new, [item], [])

    def move(self, uid: str, index: int) -> None:
        new = list(self.items)
        item = new.pop(self.index(uid))
        index = max(0, min(index, len(new)))
        new.insert(index, item)
        self._transaction(new, [], [])

    def remove(self, uids: list[str]) -> list[Item]:
        for uid in uids:
            self.index(uid)  # KeyError names a missing one; nothing is changed
        gone = set(uids)
        removed = [i for i in self.items if i.uid in gone]
        self._transaction([i for i in self.items if i.uid not in gone], [], list(gone))
        return removed

    def clear(self) -> int:
        n = len(self.items)
        self._transaction([], [], [i.uid for i in self.items])
        return n

    def pop_to_current(self, uid: str, current: dict[str, Any]) -> None:
        """Take an item off the queue and record it as the running one, in one
        transaction: a crash leaves it either queued or current, never neither."""
        with self._lock:
            index = self.index(uid)
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute("DELETE FROM items WHERE uid = ?", (uid,))
                cur.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('current', ?)",
                    (json.dumps(current),),
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self.items = self.items[:index] + self.items[index + 1 :]
            self.version += 1

    def requeue_current(self, item: Item) -> None:
        """Put the current item (never started) back at the front and forget it
        as current, in one transaction."""
        with self._lock:
            if any(i.uid == item.uid for i in self.items):
                self.set_meta("current", None)  # already back (an earlier attempt)
                return
            new = [item, *self.items]
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    "INSERT OR REPLACE INTO items (uid, pos, macro, args, repeat, meta, added) "
                    "VALUES (?, 0, ?, ?, ?, ?, ?)",
                    (
                        item.uid,
                        item.macro,
                        json.dumps(item.args),
                        item.repeat,
                        json.dumps(item.meta),
                        item.added,
                    ),
                )
                cur.executemany(
                    "UPDATE items SET pos = ? WHERE uid = ?",
                    [(n, i.uid) for n, i in enumerate(new)],
                )
                cur.execute("DELETE FROM meta WHERE key = 'current'")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self.items = new
            self.version += 1

    # ---------------------------------------------------------- meta values
    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self._lock:
            if value is None:
                self._db.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (key, json.dumps(value)),
                )

    # -------------------------------------------------------------- history
    def finish_current(self, entry: HistoryEntry) -> None:
        """Record the outcome and forget the current item, in one transaction."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute(
                    "INSERT INTO history (uid, macro, args, repeat, repetitions_done, outcome, "
                    "error, started, ended, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        entry.uid,
                        entry.macro,
                        json.dumps(entry.args),
                        entry.repeat,
                        entry.repetitions_done,
                        entry.outcome,
                        entry.error,
                        entry.started,
                        entry.ended,
                        json.dumps(entry.meta),
                    ),
                )
                cur.execute("DELETE FROM meta WHERE key = 'current'")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def history(self, limit: int | None = None) -> list[HistoryEntry]:
        sql = (
            "SELECT id, uid, macro, args, repeat, repetitions_done, outcome, error, started, "
            "ended, meta FROM history ORDER BY id DESC"
        )
        params: tuple = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [
            HistoryEntry(
                uid, macro, json.loads(args), rep, done, outcome, error, st, en, json.loads(meta), i
            )
            for i, uid, macro, args, rep, done, outcome, error, st, en, meta in reversed(rows)
        ]

    def history_entry(self, uid: str) -> HistoryEntry | None:
        """The newest history entry of the item ``uid``, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, uid, macro, args, repeat, repetitions_done, outcome, error, started, "
                "ended, meta FROM history WHERE uid = ? ORDER BY id DESC LIMIT 1",
                (uid,),
            ).fetchone()
        if row is None:
            return None
        i, uid, macro, args, rep, done, outcome, error, st, en, meta = row
        return HistoryEntry(
            uid, macro, json.loads(args), rep, done, outcome, error, st, en, json.loads(meta), i
        )

    def clear_history(self) -> int:
        with self._lock:
            n = self._db.execute("SELECT COUNT(*) FROM history").fetchone()[0]
            self._db.execute("DELETE FROM history")
        return n
