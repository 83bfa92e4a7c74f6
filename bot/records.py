"""Vectors and records in agreement: remove a source from both, and repair what disagrees."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)


def purge(vs, rm, rel: str) -> int:
    """Remove every passage of one source from both the vector store and the record manager."""
    keys = rm.list_keys(group_ids=[rel])
    present = [k for k in keys if k in vs.docstore._dict]  # FAISS.delete raises on unknown ids
    if present:
        vs.delete(present)
    rm.delete_keys(keys)
    return len(present)


def reconcile(vs, rm, files: dict[str, dict]) -> list[str]:
    """Make the vector store, record manager and the live file list agree; return sources to re-index.

    Generations are published atomically, so this only finds damage done outside a sync (a
    half-copied data dir, a hand-edited database). Whatever disagrees is dropped on both sides,
    and the files involved are re-indexed from the folder, as a clean build would.
    """
    in_vs = set(vs.index_to_docstore_id.values())
    in_rm = set(rm.list_keys())
    extra_vs, extra_rm = in_vs - in_rm, in_rm - in_vs
    if extra_vs:
        vs.delete(list(extra_vs))
    if extra_rm:
        rm.delete_keys(list(extra_rm))
    counts = Counter(doc.metadata["source"] for doc in vs.docstore._dict.values())
    damaged = sorted(rel for rel, meta in files.items() if counts.get(rel, 0) != meta["chunks"])
    orphans = sorted(set(counts) - files.keys())
    for rel in orphans:
        purge(vs, rm, rel)
    if extra_vs or extra_rm or damaged or orphans:
        log.warning(
            "index and records disagreed (%d vectors, %d records without a partner); re-indexing %s",
            len(extra_vs), len(extra_rm), ", ".join(damaged) or "nothing",
        )
    for rel in damaged:
        purge(vs, rm, rel)
    return damaged
