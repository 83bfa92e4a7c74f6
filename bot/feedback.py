"""Thumbs up / down on answers, appended to a JSONL file that `supportbot train` reads (with
`store.url` set, to a PostgreSQL table every replica shares: bot/pgfeedback.py).

One record is one `os.write` of one line on a file opened with O_APPEND, under a lock: concurrent
writers never interleave, and a process killed mid-way leaves at most one torn last line, which
the next append first terminates (so the damage never spreads to the next record), and which the
trainer reports as a bad line.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

RATINGS = ("up", "down")


def make_record(question: str, answer: str, sources: list[dict], adapter: str, rating: str) -> dict:
    if rating not in RATINGS:
        raise ValueError(f"rating must be one of {RATINGS}, got {rating!r}")
    return {"question": question, "answer": answer,
            "sources": [{k: s.get(k) for k in ("n", "source", "section", "cited")} for s in sources],
            "adapter": adapter, "rating": rating, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def open_feedback(settings):
    """Where this bot's feedback goes: the shared table when the index is in PostgreSQL (several
    replicas, one log), else the JSONL file."""
    if settings.store.url:
        from bot.pgfeedback import PGFeedbackLog

        return PGFeedbackLog(settings.store.url, settings.store.table)
    return FeedbackLog(settings.feedback_path)


class FeedbackLog:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.where = f"file {self.path}"
        self._lock = threading.Lock()

    def append(self, question: str, answer: str, sources: list[dict], adapter: str, rating: str) -> dict:
        record = make_record(question, answer, sources, adapter, rating)
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if _ends_torn(self.path):
                    os.write(fd, b"\n")
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return record

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for raw in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out


def _ends_torn(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return False
    with path.open("rb") as f:
        f.seek(size - 1)
        return f.read(1) != b"\n"
