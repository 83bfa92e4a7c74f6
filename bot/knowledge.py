"""The knowledge base: a folder kept in sync with a FAISS index, and searched.

A sync is proportional to the change: files whose stat is unchanged are not even read (and
while this object lives, `bot.journal` names the changed files, so the others are not even
statted), the rest are hashed, and only new or edited files are parsed, split and handed to
LangChain's indexing API (which skips passages whose hash it already holds); deleted files are
purged by source through the record manager. The change is written as a new generation that shares the unchanged segments
of the live one, and published atomically (`bot.store`). Readers keep the previous `IndexView` until
the new one is built, so a search never waits for a sync.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bot.chunking import ChunkParams, split_source
from bot.config import Settings
from bot.documents import FolderScan, Skipped, folder_stats, read_source, rescan, scan_folder, stat_key
from bot.errors import KnowledgeBaseError
from bot.journal import FolderJournal
from bot.lexical import Lexicon
from bot.records import purge, reconcile
from bot.retrieval import IndexView, SearchResult
from bot.store import (
    IndexStore,
    Layout,
    Manifest,
    ManifestEncoder,
    counts_agree,
    load_generation,
    new_faiss,
    open_record_manager,
    read_manifest,
    rewrite_manifest,
    save_generation,
)

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
    files_read: int = 0  # files read and hashed; the rest were unchanged by their stat
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
        self._layout: tuple[str, Layout] | None = None  # (generation, its segments): the base of the next delta
        self._lexicon = Lexicon()  # term counts cached across views: a sync re-tokenizes only what changed
        self._sync_lock = threading.Lock()
        self._agreed = ""  # a generation whose records and vectors this process knows agree (see _apply)
        self._manifest: tuple[tuple, Manifest] | None = None  # the last file list read, by generation and files.json stat
        self._encoder = ManifestEncoder()  # keeps the text of unchanged file-list entries between syncs
        self._synced_fingerprint: tuple | None = None
        self._journal = FolderJournal()  # names changed since the last scan: the next one looks at those alone
        self._last_scan: FolderScan | None = None  # the base of that next scan; None: scan in full
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
        vs, _, layout = load_generation(gen, self.embeddings, self.embeddings.dim)
        self._layout = (gen.name, layout)
        self._agreed = ""  # read from disk: whatever was done to it since, the next sync checks
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
        # in walk order (names sorted within each folder), as the scan's fingerprint in _sync
        return tuple(folder_stats(self.settings.kb, self.settings.knowledge.extensions).items())

    def is_stale(self) -> bool:
        if self._synced_fingerprint is None:
            return True
        if self._last_scan is not None:
            pending = self._journal.pending()
            if pending is not None:
                return pending
        return self.fingerprint() != self._synced_fingerprint

    def sync(self, rebuild: bool = False, allow_empty: bool = False, progress: bool = False) -> SyncReport:
        with self._sync_lock:
            try:
                report, fingerprint = self._sync(rebuild, allow_empty, progress)
            except BaseException:
                self._last_scan = None  # its changes may not be in the index: look at everything next time
                raise
            self._last_scan.forget_bytes()  # kept for the next scan: its stats and hashes, not the files
            self._synced_fingerprint = fingerprint  # from the scan's own stats: no second walk
            report.finished_at = time.time()
            self.last_report, self.last_error = report, ""
            return report

    def _sync(self, rebuild: bool, allow_empty: bool, progress: bool) -> tuple[SyncReport, tuple]:
        t0 = time.perf_counter()
        root = self.settings.kb
        live = self.store.current()  # read outside the lock, as a stat cache only: a stat -> sha256 fact holds in any generation
        manifest = self._manifest_of(live, rebuild)
        scan = self._scan_checked(root, manifest.files if manifest.signature == self.params.signature else None)
        report = SyncReport(ignored=scan.ignored, files_read=sum(e.data is not None for e in scan.entries.values()))
        fingerprint = tuple(scan.stats.items())  # in walk order, as fingerprint() has it
        with self.store.writer():
            if self.store.current() != live:  # another process synced meanwhile
                live = self.store.current()
                manifest = self._manifest_of(live, rebuild)
            fresh = manifest.signature == self.params.signature
            known = manifest.files if fresh else {}
            sources, new_files, gone = plan_changes(scan, manifest, known, report, root, allow_empty)
            if fresh and not sources and not gone and live is not None and not rebuild and self._intact(live, manifest):
                report.unchanged = len(new_files)
                report.files_total = len(new_files)
                report.chunks_total = sum(f["chunks"] for f in new_files.values())
                report.generation = live.name
                if new_files != manifest.files:  # only stats moved (a touch, a checkout): remember them
                    rewrite_manifest(live, Manifest(manifest.signature, new_files), self._encoder)
                    self._manifest = None
                report.seconds = time.perf_counter() - t0
                return report, fingerprint
            vs, gen, layout = self._apply(live, rebuild or not fresh, known, sources, gone, new_files, report, scan.entries, progress)
        report.seconds = time.perf_counter() - t0
        report.generation = gen.name
        # derived from the view it replaces: only the changed passages are tokenized and merged in
        self._view = IndexView(vs, gen.name, self._lexicon, self._view)  # atomic swap: readers move over on their next search
        self._layout = (gen.name, layout)
        self._manifest = ((gen.name, stat_key((gen / "files.json").stat())), Manifest(self.params.signature, new_files))
        log.info("sync: %s", report.summary())
        return report, fingerprint

    def _scan(self, root: Path, known: dict | None) -> FolderScan:
        """`scan_folder`, narrowed to the files the journal saw change where it can vouch for the rest."""
        k = self.settings.knowledge
        max_bytes = int(k.max_file_mb * 2**20)
        changed = self._journal.changes() if self._last_scan is not None else None
        scan = rescan(self._last_scan, changed, root, k.extensions, max_bytes, known) if changed is not None else None
        if scan is None:  # should the full scan fail, sync() drops the kept scan
            self._journal.restart(str(root.resolve()))
            scan = scan_folder(root, k.extensions, max_bytes, known, self._journal.watch)
        self._last_scan = scan
        return scan

    def _scan_checked(self, root: Path, known: dict | None) -> FolderScan:
        """`_scan`; a missing or unreadable folder is a KnowledgeBaseError (the index left as it was)."""
        if not root.is_dir():
            raise KnowledgeBaseError(
                f"knowledge-base folder {root} does not exist or is not a folder; the index was left as it was",
                "pass --kb DIR or set kb in supportbot.toml",
            )
        try:
            return self._scan(root, known)
        except OSError as err:
            raise KnowledgeBaseError(
                f"cannot read the knowledge-base folder {root} ({err.strerror or err}); the index was left as it was",
                "check the folder's permissions",
            ) from None

    def _apply(self, live, rebuild, known, sources, gone, new_files, report, entries, progress):
        """Write the changes into a new generation and publish it. Returns (vectorstore, generation, layout)."""
        from langchain_core.indexing import index
        from tqdm import tqdm

        work = self.store.begin(seed=not rebuild)
        rm = None
        try:
            rm = open_record_manager(work / "records.sqlite")
            # a generation this process wrote or reconciled, still in memory, agrees by construction
            # (generations are published whole); one loaded from disk is checked, once
            agreed = not rebuild and live is not None and live.name == self._agreed and self._view is not None \
                and self._view.generation == live.name
            vs, base = self._working_copy(live) if not rebuild else (new_faiss(self.embeddings, self.embeddings.dim), None)
            report.repaired = [] if rebuild or agreed else reconcile(vs, rm, known)
            for rel in report.repaired:  # unchanged files among them: re-read as if they had changed
                if rel in new_files:
                    del new_files[rel]
                    parsed = read_source(entries[rel]) if rel in entries else None
                    if parsed is not None and not isinstance(parsed, Skipped):
                        sources.append((parsed, entries[rel].sha256, True, None))
            for rel in gone:
                report.chunks_deleted += purge(vs, rm, rel)
                report.deleted.append(rel)
            docs = []
            for source, sha, existed, stat in sources:
                chunks = split_source(source, self.params)
                (report.changed if existed else report.added).append(source.rel)
                if not chunks:  # e.g. only headings: nothing to index, like an empty file
                    report.chunks_deleted += purge(vs, rm, source.rel)
                    continue
                docs.extend(chunks)
                new_files[source.rel] = _with_stat({"sha256": sha, "chunks": len(chunks)}, stat)
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
            layout = save_generation(work, vs, Manifest(self.params.signature, new_files), base, self._encoder)
            rm.close()
            rm = None
            gen = self.store.commit(work)
            self._agreed = gen.name
            return vs, gen, layout
        except BaseException:
            if rm is not None:
                rm.close()
            shutil.rmtree(work, ignore_errors=True)
            raise

    def _working_copy(self, live) -> tuple:
        """A private, mutable copy of the live index (the published view is never mutated), and the
        (generation folder, layout) a delta is written against (None: write it whole)."""
        if live is None:
            return new_faiss(self.embeddings, self.embeddings.dim), None
        view, layout = self._view, self._layout
        if view is not None and view.generation == live.name and layout is not None and layout[0] == live.name:
            import faiss
            from langchain_community.docstore.in_memory import InMemoryDocstore

            vs = new_faiss(self.embeddings, self.embeddings.dim)
            vs.index = faiss.clone_index(view.vs.index)
            vs.docstore = InMemoryDocstore(dict(view.vs.docstore._dict))
            vs.index_to_docstore_id = dict(view.vs.index_to_docstore_id)
            return vs, (live, layout[1])
        try:
            vs, _, loaded = load_generation(live, self.embeddings, self.embeddings.dim)
            return vs, (live, loaded)
        except KnowledgeBaseError as err:
            log.warning("%s; rebuilding from the folder", err)
            return new_faiss(self.embeddings, self.embeddings.dim), None

    def _intact(self, gen: Path, manifest: Manifest) -> bool:
        """Whether a generation with nothing to change can stay live: its counts agree, and it loads
        (checked once per process: a damaged file must not survive every plain sync)."""
        if not counts_agree(gen, manifest):
            return False
        if self._view is None or self._view.generation != gen.name:
            try:
                self._view = self._load_view()
            except KnowledgeBaseError as err:
                log.warning("%s; re-indexing", err)
                return False
        return True

    def _manifest_of(self, gen: Path | None, rebuild: bool = False) -> Manifest:
        """The generation's file list, read again only when files.json is another file (3 ms at 1,000
        files); an empty one with no generation or for a rebuild."""
        if gen is None or rebuild:
            return Manifest()
        try:
            key = (gen.name, stat_key((gen / "files.json").stat()))
        except OSError:
            key = None
        if key is None or self._manifest is None or self._manifest[0] != key:
            self._manifest = (key, read_manifest(gen))
        return self._manifest[1]

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

    def close(self) -> None:
        """Stop the watcher and give back the folder journal (an inotify instance: Linux allows a
        user 128 by default). The index stays searchable, and a later sync scans in full."""
        self.stop_watching()
        with self._sync_lock:
            self._journal.close()
            self._last_scan = None

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _with_stat(meta: dict, stat: list[int] | None) -> dict:
    """A file-list entry carrying the stat the next scan may trust (none when it was too recent)."""
    meta = {k: v for k, v in meta.items() if k != "stat"}
    return {**meta, "stat": stat} if stat else meta


def plan_changes(scan: FolderScan, manifest: Manifest, known: dict, report: SyncReport, root: Path,
                 allow_empty: bool) -> tuple[list, dict, list[str]]:
    """What a sync must change, whatever holds the index (FAISS here, PostgreSQL in `bot.pgstore`):
    (sources to index as (Source, sha256, existed, stat), the file list without them, files gone).
    `known`: the live list's entries that still count. Refuses a folder gone empty unless `allow_empty`."""
    sources, new_files = [], {}
    kept = {s.rel for s in scan.skipped if s.keep_previous}
    for rel, entry in scan.entries.items():
        old = known.get(rel)
        if old and old["sha256"] == entry.sha256:
            if entry.data is None:  # not read: its stat matched the trusted one of this entry, which stands
                new_files[rel] = old
                continue
            stat = scan.trusted_stat(rel)
            new_files[rel] = old if old.get("stat") == stat else _with_stat(old, stat)
            continue
        parsed = read_source(entry)
        if isinstance(parsed, Skipped):
            log.warning("skipped %s: %s", rel, parsed.reason)
            scan.skipped.append(parsed)
            if parsed.keep_previous:
                kept.add(rel)
            continue
        sources.append((parsed, entry.sha256, old is not None, scan.trusted_stat(rel)))
    for rel in kept & manifest.files.keys():
        new_files[rel] = manifest.files[rel]  # unreadable now: keep its last good version
    report.skipped = [
        {"file": s.rel, "reason": s.reason, "kept_previous": s.rel in manifest.files and s.keep_previous}
        for s in scan.skipped
    ]
    reading = {src.rel for src, *_ in sources}
    gone = [rel for rel in manifest.files if rel not in new_files and rel not in reading]
    if not new_files and not sources and manifest.files and not allow_empty:
        raise KnowledgeBaseError(
            f"{root} has no readable documents now; the index of {len(manifest.files)} files was kept",
            "check the folder (wrong --kb?), or run `supportbot sync --allow-empty` to really empty the index",
        )
    return sources, new_files, gone
