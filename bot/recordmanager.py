"""LangChain's record manager on the standard library's sqlite3, in LangChain's own table.

`index()` asks the record manager four to six questions per sync. Through SQLRecordManager each
is an ORM session; here each is one SQL statement. At 1,000 files, a one-file sync's `index()`
minus its embedding took 13.3 ms with SQLRecordManager and 6.0 ms with this (medians, the two
alternated in one process). The table, its constraint and its indexes are the ones
SQLRecordManager creates, so either can open a file the other wrote (a test pins it).

The connection writes without SQLite's own fsyncs and journal file. That is safe only because
the database lives in a private work folder: `IndexStore.commit` fsyncs it before it goes live, and
a crash before that discards the folder.
"""

from __future__ import annotations

import math
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from langchain_core.indexing import RecordManager

SCHEMA = """
CREATE TABLE IF NOT EXISTS upsertion_record (
    uuid VARCHAR NOT NULL,
    "key" VARCHAR,
    namespace VARCHAR NOT NULL,
    group_id VARCHAR,
    updated_at FLOAT,
    PRIMARY KEY (uuid),
    CONSTRAINT uix_key_namespace UNIQUE ("key", namespace)
);
CREATE INDEX IF NOT EXISTS ix_upsertion_record_uuid ON upsertion_record (uuid);
CREATE INDEX IF NOT EXISTS ix_upsertion_record_key ON upsertion_record ("key");
CREATE INDEX IF NOT EXISTS ix_upsertion_record_namespace ON upsertion_record (namespace);
CREATE INDEX IF NOT EXISTS ix_upsertion_record_group_id ON upsertion_record (group_id);
CREATE INDEX IF NOT EXISTS ix_upsertion_record_updated_at ON upsertion_record (updated_at);
CREATE INDEX IF NOT EXISTS ix_key_namespace ON upsertion_record ("key", namespace);
"""
# keys are sent in slices under 999, the most bound parameters a statement takes in SQLite before
# 3.32 (32,766 since)
CHUNK = 900


class SqliteRecordManager(RecordManager):
    """Which passage hashes are indexed, per source file: `index()`'s bookkeeping, one file per generation."""

    def __init__(self, namespace: str, path: Path):
        super().__init__(namespace=namespace)
        self._db = sqlite3.connect(path)  # a write begins a transaction; `with self._db` ends it
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("PRAGMA journal_mode=MEMORY")
        self._last = 0.0

    def close(self) -> None:
        self._db.close()

    def create_schema(self) -> None:
        self._db.executescript(SCHEMA)

    def get_time(self) -> float:
        # Later than every record and every earlier answer. index() deletes a source's records
        # older than its own start; SQLRecordManager's clock (SQLite's) counts milliseconds, so two
        # runs within one left the first one's passages behind, as would a wall clock set back.
        (latest,) = self._db.execute("SELECT max(updated_at) FROM upsertion_record").fetchone()
        self._last = max(time.time(), math.nextafter(max(latest or 0.0, self._last), math.inf))
        return self._last

    def update(self, keys: Sequence[str], *, group_ids: Sequence[str | None] | None = None,
               time_at_least: float | None = None) -> None:
        group_ids = [None] * len(keys) if group_ids is None else group_ids
        if len(keys) != len(group_ids):
            raise ValueError(f"Number of keys ({len(keys)}) does not match number of group_ids ({len(group_ids)})")
        now = self.get_time()
        if time_at_least and now < time_at_least:
            raise AssertionError(f"Time sync issue: {now} < {time_at_least}")
        rows = [(str(uuid.uuid4()), k, self.namespace, g, now) for k, g in zip(keys, group_ids)]
        with self._db:
            self._db.executemany(
                'INSERT INTO upsertion_record (uuid, "key", namespace, group_id, updated_at) VALUES (?, ?, ?, ?, ?) '
                'ON CONFLICT ("key", namespace) DO UPDATE SET updated_at = excluded.updated_at, group_id = excluded.group_id',
                rows,
            )

    def exists(self, keys: Sequence[str]) -> list[bool]:
        found = set()
        for part in _slices(list(keys)):
            found.update(self._keys(f'"key" IN ({_marks(part)})', part))
        return [k in found for k in keys]

    def list_keys(self, *, before: float | None = None, after: float | None = None,
                  group_ids: Sequence[str] | None = None, limit: int | None = None) -> list[str]:
        if group_ids and len(group_ids) > CHUNK:  # a group's keys are its own: slices never overlap
            keys: list[str] = []
            for part in _slices(list(dict.fromkeys(group_ids))):
                keys += self.list_keys(before=before, after=after, group_ids=part,
                                       limit=limit - len(keys) if limit else None)
                if limit and len(keys) >= limit:
                    break
            return keys
        where, args = [], []
        if after:  # falsy bounds are ignored, as SQLRecordManager ignores them
            where.append("updated_at > ?")
            args.append(after)
        if before:
            where.append("updated_at < ?")
            args.append(before)
        if group_ids:
            where.append(f"group_id IN ({_marks(group_ids)})")
            args.extend(group_ids)
        tail = f" LIMIT {int(limit)}" if limit else ""
        return self._keys(" AND ".join(where) or "1", args, tail)

    def delete_keys(self, keys: Sequence[str]) -> None:
        with self._db:
            for part in _slices(list(keys)):
                self._db.execute(
                    f'DELETE FROM upsertion_record WHERE namespace = ? AND "key" IN ({_marks(part)})',
                    [self.namespace, *part],
                )

    def _keys(self, where: str, args: Sequence, tail: str = "") -> list[str]:
        sql = f'SELECT "key" FROM upsertion_record WHERE namespace = ? AND ({where}){tail}'
        return [row[0] for row in self._db.execute(sql, [self.namespace, *args])]

    # index() is synchronous here; the async half of the interface is not used
    async def acreate_schema(self) -> None:
        self.create_schema()

    async def aget_time(self) -> float:
        return self.get_time()

    async def aupdate(self, keys, *, group_ids=None, time_at_least=None) -> None:
        self.update(keys, group_ids=group_ids, time_at_least=time_at_least)

    async def aexists(self, keys):
        return self.exists(keys)

    async def alist_keys(self, *, before=None, after=None, group_ids=None, limit=None):
        return self.list_keys(before=before, after=after, group_ids=group_ids, limit=limit)

    async def adelete_keys(self, keys) -> None:
        self.delete_keys(keys)


def _marks(items: Sequence) -> str:
    return ", ".join("?" * len(items))


def _slices(keys: list[str]):
    for start in range(0, len(keys), CHUNK):
        yield keys[start:start + CHUNK]
