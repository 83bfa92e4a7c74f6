"""The knowledge base in PostgreSQL + pgvector (`store.url`), shared by every bot process pointed at it.

The same interface as `bot.knowledge.KnowledgeBase` (it is one: the folder scan, the journal, the
change plan, the watcher and `SyncReport` are inherited), with the index in langchain-postgres's
PGVectorStore and LangChain's SQLRecordManager in one database (`bot.pgindex` has the tables).

Readers never see a half-done sync. LangChain's `index()` adds a sync's new passages before it
deletes the old ones: straight into PGVectorStore, 12 of 1,537 searches made during a sync saw
duplicates or stale passages. Here `index()` writes through `_Staged`: new passages are stamped
with the sync's pending generation and removed ones marked with it, which readers ignore (every
search filters on the live generation inside its one statement), until one transaction publishes
the file list and the generation together. One syncer at a time: an advisory lock.

Searches run in PostgreSQL: the dense top candidates by pgvector, the lexical ones by BM25 computed
in SQL over the same terms as `bot.lexical` (a tsvector of `tokenize`'s output), then fused, twins
collapsed and capped by `IndexView.rank`, so both stores rank alike.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections import Counter

import numpy as np
from langchain_core.documents import Document
from langchain_core.vectorstores import VectorStore

from bot.chunking import split_source
from bot.documents import walk_key
from bot.errors import ConfigError, KnowledgeBaseError
from bot.knowledge import KnowledgeBase, SyncReport, _with_stat, plan_changes
from bot.lexical import tokenize
from bot.pgindex import NEVER, PGIndex
from bot.retrieval import IndexView, SearchResult
from bot.store import Manifest

log = logging.getLogger(__name__)

ENGINE_MODULES = ("langchain_postgres", "psycopg", "sqlalchemy", "langchain_classic")


def require_engines() -> None:
    missing = [m for m in ENGINE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"store.url is set, but {', '.join(missing)} is not installed",
                          "pip install 'supportbot[engines]', or leave store.url empty for the FAISS files")


class PGView:
    """What `view()` gives the chain, the team page and the benchmarks: the live generation's
    passages (without vectors: searches run in PostgreSQL)."""

    def __init__(self, live: int, rows: list):
        self.live, self.generation = live, f"pg-{live:06d}"
        self.ids = [r[0] for r in rows]
        self.docs = [Document(content, metadata={**(meta or {}), "source": source}, id=i)
                     for i, content, source, meta in rows]

    def __len__(self) -> int:
        return len(self.ids)

    def sources(self) -> dict[str, int]:
        return dict(Counter(d.metadata["source"] for d in self.docs))


class _Candidates(IndexView):
    """One question's candidates from PostgreSQL, as an IndexView that `rank` can order."""

    def __init__(self, rows: list):
        # a fixed order, so ties break alike on every replica: the folder's walk order, as a FAISS
        # index built from the folder holds them (a page filed twice is shown from its first file)
        rows = sorted(rows, key=lambda r: (walk_key(r[2]), (r[3] or {}).get("start", 0), r[0]))
        self.generation, self.rows = "", rows
        self.ids = [r[0] for r in rows]
        self.docs = [Document(r[1], metadata={**(r[3] or {}), "source": r[2]}) for r in rows]
        self.vectors = np.asarray([r[4] for r in rows], dtype=np.float32).reshape(len(rows), -1)
        self._shingles = {}
        self._lead = np.asarray([float(bool(d.metadata.get("lead"))) for d in self.docs], dtype=np.float32)


class _Staged(VectorStore):
    """The vector store `index()` writes to during one sync: nothing it does is visible before the
    sync publishes. A passage removed and added again in the same sync (a source split across
    `index()` batches, a repair) comes back as it was, not embedded again (except for a rebuild)."""

    def __init__(self, store: PGIndex, gen: int, refresh: bool):
        self.store, self.gen, self.refresh = store, gen, refresh
        self.revived = self.back = self.killed = 0

    @property
    def embeddings(self):
        return self.store.embeddings

    def add_documents(self, documents: list[Document], ids: list[str] | None = None, **kwargs) -> list[str]:
        ids = list(ids or [d.id for d in documents])
        present = self.store.existing(ids)
        back = [(i, d) for i, d in zip(ids, documents) if i in present]
        if back:
            self.back += len(back)
            if self.refresh:
                vectors = self.embeddings.embed_documents([d.page_content for _, d in back])
                self.store.refresh([i for i, _ in back], vectors, self.gen)
            else:
                self.revived += self.store.mark([i for i, _ in back], self.gen, dead=False)
        new = [(i, d) for i, d in zip(ids, documents) if i not in present]
        if new:
            staged = []
            for _, d in new:
                terms = tokenize(d.page_content)  # bot.lexical's terms: BM25 in SQL ranks as the FAISS path does
                staged.append(Document(d.page_content, metadata={
                    **d.metadata, "born": self.gen, "died": NEVER, "lex": " ".join(terms), "lex_len": len(terms)}))
            self.store.vs.add_documents(staged, ids=[i for i, _ in new])
        return ids

    def delete(self, ids: list[str] | None = None, **kwargs) -> bool:
        self.killed += self.store.mark(list(ids or []), self.gen, dead=True)
        return True

    def similarity_search(self, query: str, k: int = 4, **kwargs):
        raise NotImplementedError("searches go through PGKnowledgeBase.search")

    @classmethod
    def from_texts(cls, texts, embedding, metadatas=None, **kwargs):
        raise NotImplementedError


class PGKnowledgeBase(KnowledgeBase):
    def __init__(self, settings, embeddings):
        super().__init__(settings, embeddings)
        s = settings.store
        self.store = PGIndex(s.url, s.table, embeddings.dim, embeddings, s.lock_seconds)
        # this machine's stats of the files (rel -> stat): the shared file list holds none, since
        # another machine's inodes and times mean nothing here
        self._stats: dict[str, list] = {}
        self._files: tuple[int, dict] | None = None  # (generation, its file list) last read
        self._agreed = 0  # a generation whose records and passages this process knows agree

    # ---------------------------------------------------------------- reading
    def view(self) -> PGView:
        """The live generation's passages, read again only when another generation went live. With
        the server unreachable, the last one read (the chain's small talk and the team page go on)."""
        try:
            live = self.store.live()
        except KnowledgeBaseError:
            if self._view is not None:
                return self._view
            raise
        if self._view is None or self._view.live != live:
            self._view = PGView(*self.store.docs())
        return self._view

    def search(self, query: str, k: int | None = None) -> SearchResult:
        params = self.settings.retrieval
        k = k or params.k
        t0 = time.perf_counter()
        qvec = np.asarray(self.embeddings.embed_query(query), dtype=np.float32)
        t1 = time.perf_counter()
        terms = sorted(set(tokenize(query))) if params.lexical_weight > 0 else []
        rows = self.store.search(qvec, terms, max(params.candidates, k))
        if rows:
            view = _Candidates(rows)
            cosine = {i: float(r[5]) for i, r in enumerate(view.rows)}
            lexical = {i: float(r[6]) for i, r in enumerate(view.rows) if r[6] is not None}
            result = view.rank(query, cosine, lexical, params, k, t1)
        else:
            result = SearchResult(query, [], params.threshold)
        result.timings = {"embed": t1 - t0, "retrieve": time.perf_counter() - t1}
        result.seconds = time.perf_counter() - t0
        return result

    # ---------------------------------------------------------------- syncing
    def _sync(self, rebuild: bool, allow_empty: bool, progress: bool) -> tuple[SyncReport, tuple]:
        t0 = time.perf_counter()
        root, store = self.settings.kb, self.store
        with store.writer() as c:
            state = store.state(c)
            files = self._files[1] if self._files and self._files[0] == state["live"] else store.manifest(c)
            self._files = (state["live"], files)
            fresh = state["signature"] == self.params.signature and not rebuild
            shared = {} if rebuild else files
            manifest = Manifest(state["signature"], {rel: _with_stat(m, self._stats.get(rel)) for rel, m in shared.items()})
            known = dict(manifest.files) if fresh else {}
            scan = self._scan_checked(root, known or None)
            report = SyncReport(ignored=scan.ignored, files_read=sum(e.data is not None for e in scan.entries.values()))
            fingerprint = tuple(scan.stats.items())  # in walk order, as fingerprint() has it
            gen, damaged = None, []
            if not self._agrees(state, files):
                gen = store.begin(c)
                damaged = self._reconcile(c, state["live"], gen, files, known)
                report.repaired = sorted(set(damaged) & scan.entries.keys())
            sources, new_files, gone = plan_changes(scan, manifest, known, report, root, allow_empty)
            whole = rebuild or not fresh
            if gen is None and not whole and not sources and not gone:  # nothing changed: nothing written
                self._stats = {rel: m["stat"] for rel, m in new_files.items() if m.get("stat")}
                report.unchanged = report.files_total = len(new_files)
                report.chunks_total, report.generation = state["n"], f"pg-{state['live']:06d}"
                report.seconds = time.perf_counter() - t0
                return report, fingerprint
            gen = gen or store.begin(c)
            staged = _Staged(store, gen, refresh=rebuild)
            if whole:  # everything goes, and what is added again comes back (re-embedded for a rebuild)
                staged.killed += store.kill_all(c, gen)
                store.rm.delete_keys(store.rm.list_keys())
            self._apply(staged, sources, gone, new_files, damaged, report, progress)
            stale = [rel for rel in files if rel not in new_files]
            changed = {rel: m for rel, m in new_files.items()
                       if whole or files.get(rel) != {"sha256": m["sha256"], "chunks": m["chunks"]}}
            published = store.publish(c, gen, self.params.signature, changed, stale, whole)
        self._files = (gen, {rel: {"sha256": m["sha256"], "chunks": m["chunks"]} for rel, m in new_files.items()})
        self._stats = {rel: m["stat"] for rel, m in new_files.items() if m.get("stat")}
        self._agreed = gen
        report.chunks_deleted = staged.killed - staged.back
        report.unchanged = len(new_files) - len(sources)
        report.files_total, report.chunks_total = len(new_files), published["n"]
        report.generation = f"pg-{gen:06d}"
        report.seconds = time.perf_counter() - t0
        log.info("sync: %s", report.summary())
        return report, fingerprint

    def _apply(self, staged: _Staged, sources, gone, new_files, damaged, report, progress) -> None:
        """The change, written as the pending generation (the FAISS path's `_apply`, on `_Staged`)."""
        from langchain_core.indexing import index
        from tqdm import tqdm

        for rel in gone:
            self._purge(staged, rel)
            report.deleted.append(rel)
        docs = []
        for source, sha, existed, stat in sources:
            chunks = split_source(source, self.params)
            (report.changed if existed or source.rel in damaged else report.added).append(source.rel)
            if not chunks:  # e.g. only headings: nothing to index, like an empty file
                self._purge(staged, source.rel)
                continue
            # the file's opening passage (lowest offset, first on a tie), for retrieval.lead_bonus:
            # a search sees only its candidates, so the mark travels with the passage
            lead = min(range(len(chunks)), key=lambda i: chunks[i].metadata["start"])
            chunks[lead].metadata["lead"] = True
            docs.extend(chunks)
            new_files[source.rel] = _with_stat({"sha256": sha, "chunks": len(chunks)}, stat)
        bar = tqdm(total=len(docs), desc="embedding", unit="passage", disable=None if progress else True)
        self.embeddings.on_batch = bar.update
        try:
            result = index(docs, self.store.rm, staged, cleanup="incremental", source_id_key="source",
                           key_encoder="sha256", batch_size=256)
        finally:
            self.embeddings.on_batch = None
            bar.close()
        report.chunks_embedded = result["num_added"] - staged.revived

    def _purge(self, staged: _Staged, rel: str) -> None:
        keys = self.store.rm.list_keys(group_ids=[rel])
        staged.delete(keys)
        self.store.rm.delete_keys(keys)

    def _agrees(self, state: dict, files: dict) -> bool:
        """Whether the live generation is whole: published (not dirty), and its passage count that of
        its file list and of the record manager (counted unless this process published or checked it)."""
        if state["dirty"]:
            return False
        if state["live"] and state["live"] == self._agreed:
            return True
        agree = state["n"] == sum(m["chunks"] for m in files.values()) == self.store.records()
        self._agreed = state["live"] if agree else 0
        return agree

    def _reconcile(self, c, live: int, gen: int, files: dict, known: dict) -> list[str]:
        """After a sync that did not publish (a crash, the server gone), or records that disagree:
        drop its leftovers, then re-index (in `gen`) the sources whose passages and records differ.
        Returns them; they leave `known`, so the plan reads them again."""
        rm = self.store.rm
        rows = self.store.recover(c, live)  # id -> source of the live passages
        keys = set(rm.list_keys())
        if keys - rows.keys():
            rm.delete_keys(list(keys - rows.keys()))
        counts = Counter(rows.values())
        damaged = {rows[i] for i in rows.keys() - keys}
        damaged |= {rel for rel, m in files.items() if counts.get(rel, 0) != m["chunks"]}
        damaged |= set(counts) - files.keys()
        for rel in sorted(damaged):
            ids = [i for i, source in rows.items() if source == rel]
            self.store.mark(ids, gen, dead=True)
            rm.delete_keys(rm.list_keys(group_ids=[rel]))
            known.pop(rel, None)
        if damaged:
            log.warning("index and records disagreed after an unfinished sync; re-indexing %s", ", ".join(sorted(damaged)))
        return sorted(damaged)

    def close(self) -> None:
        super().close()
        self.store.close()
