"""The answer store: one SQLite file per study (`<study>/responses.sqlite`), WAL journal.

Every answer is one `BEGIN IMMEDIATE ... COMMIT` transaction; the key (rater_id, trial_id) makes a
repeated submission idempotent: the first answer stays, a repeat with the same choice is reported
as a duplicate, one with another choice as a conflict (nothing is overwritten). Tokens are kept as
SHA-256 hashes only. The file is the raters' answers: it is created 0600 (as the token files),
and SQLite gives its -wal/-shm files the database file's mode. Each thread gets its own connection (SQLite connections are not shared
across threads); writers wait for each other through `busy_timeout`.

Tables
- raters(rater_id PK, rater_index UNIQUE, token_sha256 UNIQUE, source build|admin, created_at)
- responses(rater_id, trial_id, position, kind pair|check, item, question, left_role, right_role,
  choice left|right, chosen (the chosen role: a variant, or real/corrupt for a check),
  correct (checks: 1/0; pairs: NULL), client_ms, answered_at; PK (rater_id, trial_id))
- meta(key PK, value): format, manifest_sha256
"""
from __future__ import annotations

import datetime as _dt
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

from ..errors import Db3dError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    rater_id TEXT PRIMARY KEY,
    rater_index INTEGER NOT NULL UNIQUE,
    token_sha256 TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS responses (
    rater_id TEXT NOT NULL REFERENCES raters(rater_id),
    trial_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('pair', 'check')),
    item TEXT NOT NULL,
    question TEXT NOT NULL,
    left_role TEXT NOT NULL,
    right_role TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right')),
    chosen TEXT NOT NULL,
    correct INTEGER,
    client_ms INTEGER,
    answered_at TEXT NOT NULL,
    PRIMARY KEY (rater_id, trial_id)
);
"""
RESPONSE_COLUMNS = ["rater_id", "trial_id", "position", "kind", "item", "question", "left_role", "right_role",
                    "choice", "chosen", "correct", "client_ms", "answered_at"]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _private(db: Path) -> None:
    """Create `db` owner-only (0600) before SQLite opens it; tighten a database (and its WAL/SHM
    files) left readable by an older version."""
    os.close(os.open(db, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if p.exists() and p.stat().st_mode & 0o077:
            p.chmod(0o600)


class Store:
    """Thread-safe access to one study's SQLite file."""

    def __init__(self, path: str | Path, busy_timeout_ms: int = 30000):
        self.path = Path(path)
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private(self.path)
        con = self._con()
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise Db3dError(f"{self.path}: SQLite could not switch to WAL (journal_mode={mode}); "
                            "put the study on a local file system")
        con.executescript(SCHEMA)

    # ---- connections
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None,
                                  check_same_thread=False)
            con.row_factory = sqlite3.Row
            con.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA synchronous=FULL")
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def close(self) -> None:
        with self._lock:
            for con in self._all:
                try:
                    con.close()
                except sqlite3.ProgrammingError:  # pragma: no cover - closed in another thread
                    pass
            self._all.clear()
        self._local = threading.local()

    def journal_mode(self) -> str:
        return str(self._con().execute("PRAGMA journal_mode").fetchone()[0]).lower()

    # ---- meta
    def set_meta(self, key: str, value: str) -> None:
        self._con().execute("INSERT INTO meta(key, value) VALUES (?, ?) "
                            "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    def get_meta(self, key: str) -> str | None:
        row = self._con().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    # ---- raters
    def add_rater(self, rater_id: str, rater_index: int, token_sha256: str, source: str = "build") -> bool:
        """Register a rater; False if that id is already there (nothing changes)."""
        cur = self._con().execute(
            "INSERT OR IGNORE INTO raters(rater_id, rater_index, token_sha256, source, created_at) VALUES (?,?,?,?,?)",
            (rater_id, int(rater_index), token_sha256, source, _now()))
        return cur.rowcount == 1

    def new_rater_index(self) -> int:
        row = self._con().execute("SELECT COALESCE(MAX(rater_index) + 1, 0) FROM raters").fetchone()
        return int(row[0])

    def rater_by_token_hash(self, token_sha256: str) -> sqlite3.Row | None:
        return self._con().execute("SELECT * FROM raters WHERE token_sha256=?", (token_sha256,)).fetchone()

    def raters(self) -> list[dict]:
        return [dict(r) for r in self._con().execute("SELECT * FROM raters ORDER BY rater_index")]

    # ---- answers
    def record_answer(self, rater_id: str, trial: dict, choice: str, client_ms: int | None = None) -> tuple[str, dict]:
        """Store one answer in its own transaction -> (status, stored row).

        status: "created"; "duplicate" (already answered with this choice: nothing changes);
        "conflict" (already answered with the other choice: the first answer stays).
        """
        if choice not in ("left", "right"):
            raise ValueError(f"choice must be left or right, not {choice!r}")
        chosen = trial[choice]["role"]
        correct = None if trial["kind"] != "check" else int(chosen == "real")
        row = {"rater_id": rater_id, "trial_id": trial["trial_id"], "position": int(trial["position"]),
               "kind": trial["kind"], "item": trial["item"], "question": trial["question"],
               "left_role": trial["left"]["role"], "right_role": trial["right"]["role"], "choice": choice,
               "chosen": chosen, "correct": correct, "client_ms": client_ms, "answered_at": _now()}
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            old = con.execute("SELECT * FROM responses WHERE rater_id=? AND trial_id=?",
                              (rater_id, trial["trial_id"])).fetchone()
            if old is None:
                con.execute(f"INSERT INTO responses({', '.join(RESPONSE_COLUMNS)}) "
                            f"VALUES ({', '.join('?' * len(RESPONSE_COLUMNS))})",
                            [row[c] for c in RESPONSE_COLUMNS])
                status = "created"
            else:
                row = dict(old)
                status = "duplicate" if old["choice"] == choice else "conflict"
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return status, row

    def answered(self, rater_id: str) -> set[str]:
        return {r[0] for r in self._con().execute("SELECT trial_id FROM responses WHERE rater_id=?", (rater_id,))}

    def responses(self, rater_ids: Iterable[str] | None = None) -> list[dict]:
        sql = f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM responses"
        args: list[Any] = []
        if rater_ids is not None:
            ids = list(rater_ids)
            sql += f" WHERE rater_id IN ({', '.join('?' * len(ids))})"
            args = ids
        sql += " ORDER BY rater_id, position"
        return [dict(r) for r in self._con().execute(sql, args)]

    def progress(self) -> list[dict]:
        """Per rater: answers given and checks passed so far (admin view)."""
        rows = self._con().execute(
            "SELECT r.rater_id, r.rater_index, r.source, COUNT(s.trial_id) AS answered, "
            "SUM(s.kind='check') AS checks, SUM(s.correct) AS checks_correct, MAX(s.answered_at) AS last_answer "
            "FROM raters r LEFT JOIN responses s ON s.rater_id = r.rater_id "
            "GROUP BY r.rater_id ORDER BY r.rater_index")
        return [{k: (v if v is not None else (0 if k in ("checks", "checks_correct") else v))
                 for k, v in dict(r).items()} for r in rows]
