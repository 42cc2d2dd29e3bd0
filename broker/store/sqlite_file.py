"""The durable store's file: its schema, the lock that keeps it to one process, checks of a
file's kind and version, backup and restore (SQLite's online backup API), and its URL."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from urllib.parse import parse_qs

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS calls (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    helper_id TEXT,
    assigned_at REAL,
    ended_at REAL,
    end_seq INTEGER,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_open ON calls (state) WHERE ended_at IS NULL;
CREATE INDEX IF NOT EXISTS calls_ended ON calls (ended_at, end_seq);
CREATE INDEX IF NOT EXISTS calls_end_seq ON calls (end_seq);
CREATE INDEX IF NOT EXISTS calls_helper ON calls (helper_id, assigned_at);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, call_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_user ON history (user_id, seq);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (call_id, user_id)
);
CREATE TABLE IF NOT EXISTS cases (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);
"""


class StoreInUse(Exception):
    """Another process has the file open as its store: two brokers on one file would each
    hold their own copy of the state and overwrite each other's."""


class NotABrokerFile(Exception):
    """The file is not a vabroker database (or is one from a newer vabroker)."""


def lock_file(path: str) -> int | None:
    """Hold ``PATH.lock`` for as long as the store is open (released by the kernel when the
    process dies, however it dies). None for an in-memory database."""
    if path == ":memory:":
        return None
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreInUse(f"{path} is in use by another vabroker process") from None
    return fd


def check_broker_file(path: str | Path) -> int:
    """The schema version of a vabroker database file; ``NotABrokerFile`` if it is not one
    this vabroker can read."""
    if not Path(path).is_file():
        raise NotABrokerFile(f"{path}: no such file")
    try:
        db = sqlite3.connect(f"file:{Path(path).absolute()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise NotABrokerFile(f"{path} is not a vabroker database ({exc})") from None
    if row is None:
        raise NotABrokerFile(f"{path} is not a vabroker database (no schema version)")
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise NotABrokerFile(
            f"{path} was written by a newer vabroker (schema {version}, this one reads "
            f"{SCHEMA_VERSION})"
        )
    return version


def backup(src: str | Path, dest: str | Path) -> None:
    """Copy a store file to ``dest`` with SQLite's online backup API: a consistent copy even
    while a broker is writing to ``src``."""
    check_broker_file(src)
    _copy(src, dest)


def _copy(src: str | Path, dest: str | Path) -> None:
    source = sqlite3.connect(str(src))
    target = sqlite3.connect(str(dest))
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def restore(src: str | Path, dest: str | Path) -> None:
    """Replace the store file ``dest`` with the backup ``src``. Refused (``StoreInUse``)
    while a broker has ``dest`` open."""
    check_broker_file(src)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    fd = lock_file(str(dest))
    try:
        _copy(src, dest)
    finally:
        if fd is not None:
            os.close(fd)


def sqlite_path(url: str) -> tuple[str, str]:
    """``sqlite://PATH[?synchronous=normal|full]``: everything after ``sqlite://`` is the path
    (``sqlite:///var/lib/vabroker/broker.db`` is absolute, ``sqlite://data/broker.db``
    relative to the working directory). Returns (path, synchronous)."""
    rest = url.split("://", 1)[1]
    path, _, query = rest.partition("?")
    if not path:
        raise ValueError(f"store URL {url!r} names no file: expected sqlite:///path/to/file.db")
    options = parse_qs(query, keep_blank_values=True)
    unknown = set(options) - {"synchronous"}
    if unknown:
        raise ValueError(f"store URL {url!r}: unknown option(s) {sorted(unknown)}")
    synchronous = options.get("synchronous", ["normal"])[-1].lower()
    if synchronous not in ("normal", "full"):
        raise ValueError(f"store URL {url!r}: synchronous must be normal or full")
    return path, synchronous
