"""The knowledge base: a folder kept in sync with a FAISS index, and searched.

A sync is proportional to the change: files are hashed, and only new or edited files are parsed,
split and handed to LangChain's indexing API (which skips passages whose hash it already holds);
deleted files are purged by source through the record manager. Everything is written to a new
generation and published atomically (`bot.store`). Readers keep the previous `IndexView` until
the new one is built, so a search never waits for a sync.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bot.chunking import ChunkParams, split_source
from bot.config import Settings
from bot.documents import Skipped, folder_stats, read_source, scan_folder
from bot.errors import KnowledgeBaseError
from bot.lexical import Lexicon
from bot.retrieval import IndexView, SearchResult
from bot.store import IndexStore, Manifest, load_generation, new_faiss, open_record_manager, save_generation

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    skipped: list[dict] = field(default_factory=list)  # {"file", "reason", "kept_previous"}
    ignored: list[str] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_deleted: int = 0
    chunks_total: int = 0
    files_total: int = 0
    repaired: list[str] = field(default_factory=list)  # sources re-indexed because index and records disagreed
    generation: str = ""
    seconds: float = 0.0
    finished_at: float = 0.0  # wall-clock time (time.time()) the sync ended

    @property
    def changed_anything(self) -> bool:
        return bool(self.added or self.changed or self.deleted or self.repaired)

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.changed)} changed, {len(self.deleted)} deleted, "
            f"{self.unchanged} unchanged, {len(self.skipped)} skipped; {self.chunks_embedded} passages embedded, "
            f"{self.chunks_deleted} removed, {self.chunks_total} in the index from {self.files_total} files "
            f"({self.seconds:.2f} s)"
        )


class KnowledgeBase:
    def __init__(self, settings: Settings, embeddings):
        self.settings = settings
        self.embeddings = embeddings
        self.store = IndexStore(settings.index_dir)
        self.params = ChunkParams(settings.knowledge.chunk_chars, settings.knowledge.chunk_overlap)
        self._view: IndexView | None = None
        self._lexicon = Lexicon()  # term counts cached across views: a sync re-tokenizes only what changed
        self._sync_lock = threading.Lock()
        self._synced_fingerprint: tuple | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self.last_report: SyncReport | None = None
        self.last_error: str = ""

    # ---------------------------------------------------------------- reading
    def view(self) -> IndexView:
        """The live snapshot; loaded from disk on first use, replaced whole by each sync."""
        if self._view is None:
            with self._sync_lock:
                if self._view is None:
                    self._view = self._load_view()
        return self._view

    def _load_view(self) -> IndexView:
        gen = self.store.current()
        if gen is None:
            return IndexView(new_faiss(self.embeddings, self.embeddings.dim), lexicon=self._lexicon)
        vs, _ = load_generation(gen, self.embeddings, self.embeddings.dim)
        return IndexView(vs, gen.name, self._lexicon)

    def search(self, query: str, k: int | None = None) -> SearchResult:
        t0 = time.perf_counter()
        qvec = np.asarray(self.embeddings.embed_query(query), dtype=np.float32)
        t1 = time.perf_counter()
        result = self.view().search(query, qvec, self.settings.retrieval, k)
        result.timings = {"embed": t1 - t0, "retrieve": result.seconds}
        result.seconds = time.perf_counter() - t0
        return result

    # ---------------------------------------------------------------- syncing
    def fingerprint(self) -> tuple:
        """Cheap (stat only) summary of the folder: changes whenever a file is added/edited/removed."""
        return tuple(sorted(folder_stats(self.settings.kb, self.settings.knowledge.extensions).items()))

    def is_stale(self) -> bool:
        return self._synced_fingerprint is None or self.fingerprint() != self._synced_fingerprint

    def sync(self, rebuild: bool = False, allow_empty: bool = False, progress: bool = False) -> SyncReport:
        with self._sync_lock:
            report, fingerprint = self._sync(rebuild, allow_empty, progress)
            self._synced_fingerprint = fingerprint  # from the scan's own stats: no second walk
            report.finished_at = time.time()
            self.last_report, self.last_error = report, ""
            return report

    def _sync(self, rebuild: bool, allow_empty: bool, progress: bool) -> tuple[SyncReport, tuple]:
        t0 = time.perf_counter()
        root = self.settings.kb
        if not root.is_dir():
            raise KnowledgeBaseError(
                f"knowledge-base folder {root} does not exist or is not a folder; the index was left as it was",
                "pass --kb DIR or set kb in supportbot.toml",
            )
        k = self.settings.knowledge
        try:
            scan = scan_folder(root, k.extensions, int(k.max_file_mb * 2**20))
        except OSError as err:
            raise KnowledgeBaseError(
                f"cannot read the knowledge-base folder {root} ({err.strerror or err}); the index was left as it was",
                "check the folder's permissions",
            ) from None
        report = SyncReport(ignored=scan.ignored)
        fingerprint = tuple(sorted(scan.stats.items()))
        with self.store.writer():
            live = self.store.current()
            manifest = Manifest()
            if live is not None and not rebuild:
                manifest = _read_manifest(live)
            fresh = manifest.signature == self.params.signature
            known = manifest.files if fresh else {}

            sources, new_files = [], {}
            kept = {s.rel for s in scan.skipped if s.keep_previous}
            for rel, entry in scan.entries.items():
                old = known.get(rel)
                if old and old["sha256"] == entry.sha256:
                    new_files[rel] = old
                    continue
                parsed = read_source(entry)
                if isinstance(parsed, Skipped):
                    log.warning("skipped %s: %s", rel, parsed.reason)
                    scan.skipped.append(parsed)
                    if parsed.keep_previous:
                        kept.add(rel)
                    continue
                sources.append((parsed, entry.sha256, old is not None))
            for rel in kept & manifest.files.keys():
                new_files[rel] = manifest.files[rel]  # unreadable now: keep its last good version
            report.skipped = [
                {"file": s.rel, "reason": s.reason, "kept_previous": s.rel in manifest.files and s.keep_previous}
                for s in scan.skipped
            ]
            reading = {src.rel for src, _, _ in sources}
            gone = [rel for rel in manifest.files if rel not in new_files and rel not in reading]
            if not new_files and not sources and manifest.files and not allow_empty:
                raise KnowledgeBaseError(
                    f"{root} has no readable documents now; the index of {len(manifest.files)} files was kept",
                    "check the folder (wrong --kb?), or run `supportbot sync --allow-empty` to really empty the index",
                )
            if fresh and not sources and not gone and live is not None and not rebuild and _counts_agree(live, manifest):
                report.unchanged = len(new_files)
                report.files_total = len(new_files)
                report.chunks_total = sum(f["chunks"] for f in new_files.values())
                report.generation = live.name
                report.seconds = time.perf_counter() - t0
                return report, fingerprint
            vs, gen = self._apply(live, rebuild or not fresh, known, sources, gone, new_files, report, scan.entries, progress)
        report.seconds = time.perf_counter() - t0
        report.generation = gen.name
        self._view = IndexView(vs, gen.name, self._lexicon)  # atomic swap: readers move over on their next search
        log.info("sync: %s", report.summary())
        return report, fingerprint

    def _apply(self, live, rebuild, known, sources, gone, new_files, report, entries, progress):
        """Write the changes into a new generation and publish it. Returns (vectorstore, generation)."""
        from langchain_core.indexing import index
        from tqdm import tqdm

        work = self.store.begin() if not rebuild else self._fresh_work()
        rm = None
        try:
            rm = open_record_manager(work / "records.sqlite")
            vs = self._working_copy(live) if not rebuild else new_faiss(self.embeddings, self.embeddings.dim)
            report.repaired = [] if rebuild else _reconcile(vs, rm, known)
            for rel in report.repaired:  # unchanged files among them: re-read as if they had changed
                if rel in new_files:
                    del new_files[rel]
                    parsed = read_source(entries[rel]) if rel in entries else None
                    if parsed is not None and not isinstance(parsed, Skipped):
                        sources.append((parsed, entries[rel].sha256, True))
            for rel in gone:
                report.chunks_deleted += _purge(vs, rm, rel)
                report.deleted.append(rel)
            docs = []
            for source, sha, existed in sources:
                chunks = split_source(source, self.params)
                (report.changed if existed else report.added).append(source.rel)
                if not chunks:  # e.g. only headings: nothing to index, like an empty file
                    report.chunks_deleted += _purge(vs, rm, source.rel)
                    continue
                docs.extend(chunks)
                new_files[source.rel] = {"sha256": sha, "chunks": len(chunks)}
            bar = tqdm(total=len(docs), desc="embedding", unit="passage", disable=None if progress else True)
            self.embeddings.on_batch = bar.update
            try:
                result = index(
                    docs, rm, vs, cleanup="incremental", source_id_key="source", key_encoder="sha256", batch_size=256
                )
            finally:
                self.embeddings.on_batch = None
                bar.close()
            report.chunks_embedded = result["num_added"]
            report.chunks_deleted += result["num_deleted"]
            report.unchanged = len(new_files) - len(sources)
            report.files_total = len(new_files)
            report.chunks_total = vs.index.ntotal
            save_generation(work, vs, Manifest(self.params.signature, new_files))
            rm.engine.dispose()
            rm = None
            return vs, self.store.commit(work)
        except BaseException:
            if rm is not None:
                rm.engine.dispose()
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _fresh_work(self) -> Path:
        work = self.store.begin()
        (work / "records.sqlite").unlink(missing_ok=True)
        return work

    def _working_copy(self, live):
        """A private, mutable copy of the live index (the published view is never mutated)."""
        if live is None:
            return new_faiss(self.embeddings, self.embeddings.dim)
        view = self._view
        if view is not None and view.generation == live.name:
            import faiss
            from langchain_community.docstore.in_memory import InMemoryDocstore

            vs = new_faiss(self.embeddings, self.embeddings.dim)
            vs.index = faiss.clone_index(view.vs.index)
            vs.docstore = InMemoryDocstore(dict(view.vs.docstore._dict))
            vs.index_to_docstore_id = dict(view.vs.index_to_docstore_id)
            return vs
        try:
            return load_generation(live, self.embeddings, self.embeddings.dim)[0]
        except KnowledgeBaseError as err:
            log.warning("%s; rebuilding from the folder", err)
            return new_faiss(self.embeddings, self.embeddings.dim)

    # ---------------------------------------------------------------- watching
    def start_watching(self) -> None:
        """Poll the folder every `watch_seconds` and sync in this background thread when it changed."""
        interval = self.settings.knowledge.watch_seconds
        if interval <= 0 or self._watcher is not None:
            return
        self._stop.clear()
        if self._synced_fingerprint is None:
            self._synced_fingerprint = self.fingerprint() if self.store.current() else ()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    if self.is_stale():
                        self.sync()
                except Exception as err:  # keep serving on the previous index, and say why
                    self.last_error = str(err)
                    log.warning("background sync failed, still serving the previous index: %s", err)

        self._watcher = threading.Thread(target=loop, name="kb-watcher", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
            self._watcher = None


def _read_manifest(gen: Path) -> Manifest:
    import json

    try:
        data = json.loads((gen / "files.json").read_text(encoding="utf-8"))
        return Manifest(data.get("signature", ""), data.get("files", {}))
    except (OSError, ValueError):
        log.warning("file list of %s unreadable; every file will be re-checked", gen)
        return Manifest()


def _counts_agree(gen: Path, manifest: Manifest) -> bool:
    """Cheap integrity check of a generation: records and vectors both match the file list's counts."""
    import sqlite3

    from bot.store import RM_NAMESPACE

    expected = sum(f["chunks"] for f in manifest.files.values())
    try:
        with contextlib.closing(sqlite3.connect(f"file:{gen / 'records.sqlite'}?mode=ro", uri=True)) as db:
            (records,) = db.execute("select count(*) from upsertion_record where namespace = ?", (RM_NAMESPACE,)).fetchone()
        # FAISS flat-index header: 4-byte type tag, int32 dimension, int64 vector count.
        with open(gen / "vectors.faiss", "rb") as fh:
            vectors = int.from_bytes(fh.read(16)[8:16], "little")
    except (sqlite3.Error, OSError):
        return False
    return records == expected == vectors


def _all_keys(rm) -> set[str]:
    """Every key the record manager holds: `rm.list_keys()` without an ORM object per row (0.3 s at 2,000)."""
    from sqlalchemy import text

    with rm.engine.connect() as conn:
        rows = conn.execute(text("select key from upsertion_record where namespace = :ns"), {"ns": rm.namespace})
        return {key for (key,) in rows}


def _purge(vs, rm, rel: str) -> int:
    """Remove every passage of one source from both the vector store and the record manager."""
    keys = rm.list_keys(group_ids=[rel])
    present = [k for k in keys if k in vs.docstore._dict]  # FAISS.delete raises on unknown ids
    if present:
        vs.delete(present)
    rm.delete_keys(keys)
    return len(present)


def _reconcile(vs, rm, files: dict[str, dict]) -> list[str]:
    """Make the vector store, record manager and the live file list agree; return sources to re-index.

    Generations are published atomically, so this only finds damage done outside a sync (a
    half-copied data dir, a hand-edited database). Whatever disagrees is dropped on both sides,
    and the files involved are re-indexed from the folder, as a clean build would.
    """
    in_vs = set(vs.index_to_docstore_id.values())
    in_rm = _all_keys(rm)
    extra_vs, extra_rm = in_vs - in_rm, in_rm - in_vs
    if extra_vs:
        vs.delete(list(extra_vs))
    if extra_rm:
        rm.delete_keys(list(extra_rm))
    counts = Counter(doc.metadata["source"] for doc in vs.docstore._dict.values())
    damaged = sorted(rel for rel, meta in files.items() if counts.get(rel, 0) != meta["chunks"])
    orphans = sorted(set(counts) - files.keys())
    for rel in orphans:
        _purge(vs, rm, rel)
    if extra_vs or extra_rm or damaged or orphans:
        log.warning(
            "index and records disagreed (%d vectors, %d records without a partner); re-indexing %s",
            len(extra_vs), len(extra_rm), ", ".join(damaged) or "nothing",
        )
    for rel in damaged:
        _purge(vs, rm, rel)
    return damaged
