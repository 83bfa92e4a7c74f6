"""Feedback in PostgreSQL (`store.url` set): every replica appends to one table, `<store.table>_feedback`.

Each record is one INSERT in its own transaction, so two replicas rating at once never tear or
lose a row (the JSONL file gives that only to processes on one machine). Rows keep their insert
order (an identity column); `records()` reads them back as FeedbackLog does.
"""

from __future__ import annotations

import json
import threading

from bot.errors import KnowledgeBaseError
from bot.feedback import make_record
from bot.pgindex import SETUP_LOCK, engine_url, lock_key, unreachable


class PGFeedbackLog:
    def __init__(self, url: str, table: str):
        from sqlalchemy.engine import make_url

        self.url, self.table = engine_url(url), f"{table}_feedback"
        parsed = make_url(self.url)
        self.where = f"PostgreSQL {parsed.host or 'localhost'}:{parsed.port or 5432}, table {self.table}"
        self._engine = None
        self._lock = threading.Lock()

    def _connected(self):
        with self._lock:
            if self._engine is None:
                from sqlalchemy import create_engine

                engine = create_engine(self.url, pool_size=2, pool_pre_ping=True, connect_args={"connect_timeout": 5})
                with engine.begin() as c:  # one creator at a time: CREATE ... IF NOT EXISTS races otherwise
                    c.exec_driver_sql("SELECT pg_advisory_xact_lock(%(k)s)", {"k": lock_key(SETUP_LOCK)})
                    c.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {self.table} (id BIGINT GENERATED ALWAYS AS "
                                      "IDENTITY PRIMARY KEY, record JSONB NOT NULL, "
                                      "at TIMESTAMPTZ NOT NULL DEFAULT now())")
                self._engine = engine
            return self._engine

    def _run(self, work):
        try:
            return work(self._connected())
        except Exception as err:
            if not unreachable(err):
                raise
            raise KnowledgeBaseError("feedback cannot be saved right now: its database cannot be reached",
                                     f"try again in a minute; is PostgreSQL ({self.where}) running?") from None

    def append(self, question: str, answer: str, sources: list[dict], adapter: str, rating: str) -> dict:
        record = make_record(question, answer, sources, adapter, rating)

        def insert(engine):
            with engine.begin() as c:
                c.exec_driver_sql(f"INSERT INTO {self.table} (record) VALUES (%(r)s::jsonb)",
                                  {"r": json.dumps(record, ensure_ascii=False)})
        self._run(insert)
        return record

    def records(self) -> list[dict]:
        def select(engine):
            with engine.connect() as c:
                return [r[0] for r in c.exec_driver_sql(f"SELECT record FROM {self.table} ORDER BY id")]
        return self._run(select)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
