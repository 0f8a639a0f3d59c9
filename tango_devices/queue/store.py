"""The experiment queue's persistence: SQLite in WAL mode (no tango).

Every edit is one transaction, committed before the command that asked for it
returns: a kill -9 at any moment leaves either the queue before the edit or
the queue after it. Three tables:

- ``items``: the queue, in order (``pos``), each item a macro with its
  arguments, a repeat count, metadata and a uid;
- ``history``: what ran (outcome, times, error, repetitions done);
- ``meta``: small JSON values, among them ``current``, the item being run
  (written before its macro starts, so a restarted queue can reconcile it).

A write that fails (disk full, read-only file system, the file locked by
another program, a corrupt file) raises :class:`StoreError`, which names the
file, the cause and the fix and says that nothing changed: the transaction is
rolled back and the queue in memory is only replaced after a commit, so it
always matches the file. The connection stays usable: once the cause is gone
(space freed), the next edit works without a restart.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        # by hand: dataclasses.asdict deep-copies, 40 us an item (a 20,000-item
        # answer took 0.8 s)
        return {
            "macro": self.macro,
            "args": list(self.args),
            "repeat": self.repeat,
            "meta": dict(self.meta),
            "uid": self.uid,
            "added": self.added,
        }

    def row(self, pos: int) -> tuple:
        return (
            self.uid,
            pos,
            self.macro,
            json.dumps(self.args),
            self.repeat,
            json.dumps(self.meta),
            self.added,
        )

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


#: a position decided against the queue as it is when the edit commits
Where = Callable[[list[Item]], int]


def new_uid() -> str:
    return new_uids(1)[0]


def new_uids(n: int) -> list[str]:
    """``n`` random uids of 12 hex digits, from one read of the system's
    random source (uuid4 per item took 8 us: 0.15 s for 20,000 items)."""
    text = os.urandom(6 * n).hex()
    return [text[i : i + 12] for i in range(0, 12 * n, 12)]


def _rows(items: list[Item], positions: list[int]) -> list[tuple]:
    """Database rows; arguments and metadata that repeat (a batch of the same
    macro) are encoded once."""
    texts: dict[Any, str] = {}

    def encode(value: Any) -> str:
        if not value:
            return "[]" if isinstance(value, list) else "{}"
        key = tuple(value) if isinstance(value, list) else None
        if key is not None and all(isinstance(v, str) for v in key):
            text = texts.get(key)
            if text is None:
                text = texts[key] = json.dumps(value)
            return text
        return json.dumps(value)

    return [
        (i.uid, pos, i.macro, encode(i.args), i.repeat, encode(i.meta), i.added)
        for i, pos in zip(items, positions, strict=True)
    ]


class StoreError(RuntimeError):
    """The queue's database could not be read or written. The message names the
    file and the cause (``problem``), what became of the request (``outcome``:
    for a write, that nothing was changed) and what to do (``fix``)."""

    def __init__(self, problem: str, fix: str, outcome: str = "") -> None:
        super().__init__(f"{problem}{outcome}; {fix}")
        self.problem, self.fix, self.outcome = problem, fix, outcome


#: (words in SQLite's message or an errno, what it means, what to do)
_CAUSES = (
    (
        ("disk is full", "no space"),
        errno.ENOSPC,
        "the disk is full",
        "free space there; edits work again at once, without a restart",
    ),
    (
        ("readonly", "read-only"),
        errno.EROFS,
        "the file or its file system is read-only",
        "make the file and its directory writable (or remount the file system read-write)",
    ),
    (
        ("locked", "busy"),
        None,
        "another program holds the database locked",
        "close the program that has it open for writing (an sqlite3 shell, a backup)",
    ),
    (
        ("malformed", "not a database", "corrupt"),
        None,
        "the file is corrupt",
        "move the file away (keep it for inspection); the queue then starts on a new, "
        "empty file at the next Init",
    ),
    (
        ("disk i/o error", "i/o error"),
        errno.EIO,
        "the disk reports an I/O error",
        "check the disk and its file system",
    ),
)


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def failure(path: Path, exc: BaseException, doing: str, outcome: str = "") -> StoreError:
    """What went wrong with the file at ``path``, said for an operator: the
    file, the cause (with the free space where it lives), ``outcome`` and the fix."""
    text = str(exc).strip() or type(exc).__name__
    low = text.lower()
    code = getattr(exc, "errno", None)
    cause, fix = text, "see the server's log"
    for words, err_no, what, hint in _CAUSES:
        if (err_no is not None and code == err_no) or any(w in low for w in words):
            cause, fix = what, hint
            break
    where = ""
    try:
        mount = _mount_point(path.parent)
        free = shutil.disk_usage(mount).free
        where = f" ({_size(free)} free on {mount})"
    except OSError:
        pass
    problem = f"cannot {doing} the queue's database {path}: {cause}{where} [{text}]"
    return StoreError(problem, fix, outcome)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


class QueueStore:
    """The queue in memory (fast reads) mirrored in SQLite (every edit committed).

    ``items`` is replaced (never changed in place) after each commit, so a
    reader that takes it once sees one consistent queue without a lock.
    """

    def __init__(self, path: Path | str, busy_timeout: float = 1.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self.version = 0  # bumped at every change of the item list
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # busy_timeout: a file another program holds locked is reported
            # within a client's timeout, not after SQLite's default 5 s
            self._db = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=busy_timeout
            )
        except (OSError, sqlite3.Error) as exc:
            raise failure(self.path, exc, "open") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            rows = self._db.execute(
                "SELECT uid, pos, macro, args, repeat, meta, added FROM items ORDER BY pos"
            ).fetchall()
        except sqlite3.Error as exc:
            self._db.close()
            raise failure(self.path, exc, "open") from None
        self.items: list[Item] = [
            Item(macro, json.loads(args), repeat, json.loads(meta), str(uid), added)
            for uid, _pos, macro, args, repeat, meta, added in rows
        ]
        # the position each item has in the file (gaps are left by items taken
        # off to run): only positions that change are written
        self._pos: dict[str, int] = {str(r[0]): r[1] for r in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ plumbing
    @contextmanager
    def _write(self, doing: str = "write") -> Iterator[sqlite3.Cursor]:
        """One transaction: committed at the end of the block, rolled back if
        anything fails. An SQLite failure becomes a StoreError (nothing was
        changed); SQLite may already have rolled back by itself (disk full),
        so ROLLBACK is only sent while a transaction is open."""
        with self._lock:
            cur = self._db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                yield cur
                cur.execute("COMMIT")
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise failure(self.path, exc, doing, "; nothing was changed") from None
                raise

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the transaction is gone either way: SQLite rolls back on failure

    def _read(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            try:
                return fn()
            except sqlite3.Error as exc:
                raise failure(self.path, exc, "read") from None

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
    def _commit(
        self,
        new_items: list[Item],
        changed: list[Item],
        removed: list[str],
        deadline: float | None = None,
    ) -> None:
        """Persist a new order (and changed/removed items) in one transaction,
        then adopt it in memory. Called with the lock held. Past ``deadline``
        (time.monotonic()) the transaction is rolled back before its COMMIT and
        TimeoutError raised: nothing was changed."""
        fresh = {i.uid for i in changed}
        placed = [(n, i) for n, i in enumerate(new_items) if i.uid in fresh]
        rows = _rows([i for _, i in placed], [n for n, _ in placed])
        moved = [
            (n, i.uid)
            for n, i in enumerate(new_items)
            if i.uid not in fresh and self._pos.get(i.uid) != n
        ]
        with self._write() as cur:
            if removed:
                cur.executemany("DELETE FROM items WHERE uid = ?", [(u,) for u in removed])
            if rows:
                cur.executemany(
                    "INSERT OR REPLACE INTO items (uid, pos, macro, args, repeat, meta, added) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            if moved:
                cur.executemany("UPDATE items SET pos = ? WHERE uid = ?", moved)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("the edit took too long")
        self.items = new_items
        self._pos = {i.uid: n for n, i in enumerate(new_items)}
        self.version += 1

    def insert(
        self, items: list[Item], index: int | Where, deadline: float | None = None
    ) -> list[Item]:
        """``items`` at ``index`` (clamped to the queue), or where ``index(queue)``
        says, asked under the lock when the edit commits."""
        now = time.time()
        fresh = iter(new_uids(sum(1 for i in items if not i.uid)))
        for item in items:
            item.uid = item.uid or next(fresh)
            item.added = item.added or now
        with self._lock:
            known = {i.uid for i in self.items}
            dup = [i.uid for i in items if i.uid in known]
            if dup or len({i.uid for i in items}) != len(items):
                raise ValueError(f"duplicate uid(s): {', '.join(dup) or 'within the batch'}")
            if callable(index):
                index = index(self.items)
            index = max(0, min(index, len(self.items)))
            new = self.items[:index] + items + self.items[index:]
            self._commit(new, items, [], deadline)
        return items

    def update(self, item: Item, deadline: float | None = None) -> None:
        with self._lock:
            index = self.index(item.uid)
            new = list(self.items)
            item.added = new[index].added
            new[index] = item
            self._commit(new, [item], [], deadline)

    def move(self, uid: str, index: int | Where, deadline: float | None = None) -> None:
        with self._lock:
            if callable(index):
                index = index(self.items)
            new = list(self.items)
            item = new.pop(self.index(uid))
            index = max(0, min(index, len(new)))
            new.insert(index, item)
            self._commit(new, [], [], deadline)

    def remove(self, uids: list[str], deadline: float | None = None) -> list[Item]:
        with self._lock:
            for uid in uids:
                self.index(uid)  # KeyError names a missing one; nothing is changed
            gone = set(uids)
            removed = [i for i in self.items if i.uid in gone]
            self._commit([i for i in self.items if i.uid not in gone], [], list(gone), deadline)
        return removed

    def clear(self, deadline: float | None = None) -> int:
        with self._lock:
            n = len(self.items)
            self._commit([], [], [i.uid for i in self.items], deadline)
        return n

    def pop_to_current(self, uid: str, current: dict[str, Any]) -> None:
        """Take an item off the queue and record it as the running one, in one
        transaction: a crash leaves it either queued or current, never neither."""
        with self._lock:
            index = self.index(uid)
            with self._write() as cur:
                cur.execute("DELETE FROM items WHERE uid = ?", (uid,))
                cur.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('current', ?)",
                    (json.dumps(current),),
                )
            self.items = self.items[:index] + self.items[index + 1 :]
            self._pos.pop(uid, None)
            self.version += 1

    def requeue_current(self, item: Item) -> None:
        """Put the current item (never started) back at the front and forget it
        as current, in one transaction."""
        with self._lock:
            if any(i.uid == item.uid for i in self.items):
                self.set_meta("current", None)  # already back (an earlier attempt)
                return
            new = [item, *self.items]
            with self._write() as cur:
                cur.execute(
                    "INSERT OR REPLACE INTO items (uid, pos, macro, args, repeat, meta, added) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    item.row(0),
                )
                cur.executemany(
                    "UPDATE items SET pos = ? WHERE uid = ?",
                    [(n, i.uid) for n, i in enumerate(new) if n],
                )
                cur.execute("DELETE FROM meta WHERE key = 'current'")
            self.items = new
            self._pos = {i.uid: n for n, i in enumerate(new)}
            self.version += 1

    # ---------------------------------------------------------- meta values
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self._read(
            lambda: self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        )
        return json.loads(row[0]) if row else default

    def set_meta(self, key: str, value: Any) -> None:
        self.set_metas({key: value})

    def set_metas(self, values: dict[str, Any]) -> None:
        """Several meta values in one transaction (None deletes)."""
        texts = {k: None if v is None else json.dumps(v) for k, v in values.items()}
        with self._write() as cur:
            for key, text in texts.items():
                if text is None:
                    cur.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    cur.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, text)
                    )

    # -------------------------------------------------------------- history
    def finish_current(self, entry: HistoryEntry) -> None:
        """Record the outcome and forget the current item, in one transaction."""
        row = (
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
        )
        with self._write() as cur:
            cur.execute(
                "INSERT INTO history (uid, macro, args, repeat, repetitions_done, outcome, "
                "error, started, ended, meta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            cur.execute("DELETE FROM meta WHERE key = 'current'")

    def history(self, limit: int | None = None) -> list[HistoryEntry]:
        sql = (
            "SELECT id, uid, macro, args, repeat, repetitions_done, outcome, error, started, "
            "ended, meta FROM history ORDER BY id DESC"
        )
        params: tuple = ()
        if limit is not None:
            sql += " LIMIT ?"
            params = (limit,)
        rows = self._read(lambda: self._db.execute(sql, params).fetchall())
        return [
            HistoryEntry(
                uid, macro, json.loads(args), rep, done, outcome, error, st, en, json.loads(meta), i
            )
            for i, uid, macro, args, rep, done, outcome, error, st, en, meta in reversed(rows)
        ]

    def history_entry(self, uid: str) -> HistoryEntry | None:
        """The newest history entry of the item ``uid``, or None."""
        row = self._read(
            lambda: self._db.execute(
                "SELECT id, uid, macro, args, repeat, repetitions_done, outcome, error, started, "
                "ended, meta FROM history WHERE uid = ? ORDER BY id DESC LIMIT 1",
                (uid,),
            ).fetchone()
        )
        if row is None:
            return None
        i, uid, macro, args, rep, done, outcome, error, st, en, meta = row
        return HistoryEntry(
            uid, macro, json.loads(args), rep, done, outcome, error, st, en, json.loads(meta), i
        )

    def clear_history(self) -> int:
        with self._write() as cur:
            n = cur.execute("SELECT COUNT(*) FROM history").fetchone()[0]
            cur.execute("DELETE FROM history")
        return n
