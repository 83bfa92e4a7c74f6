"""Persistence of the index: FAISS + passages + record manager + file manifest, with no pickle.

Layout under `<data-dir>/index/`:
    CURRENT             name of the live generation, replaced atomically (os.replace)
    gen-000042/         one complete, immutable generation:
        segments.json   its segments in order, each with the ids deleted since it was written
        seg-<name>.faiss  one segment's vectors (faiss.serialize_index: FAISS's own binary format)
        seg-<name>.json   that segment's ids in FAISS order + page_content + metadata
        records.sqlite  LangChain's record manager table (which chunk hashes are indexed, per source)
        files.json      per-file sha256, chunk count and stat, plus the chunker signature
A sync writes what changed, not the whole index: one new segment with the passages it added, the
ids it removed listed against the segments holding them, and hard links to the live generation's
segment files for the rest. When removed rows pass a quarter of all rows, or segments pile up,
it writes one compacted segment instead. The new generation is built next to the live one, and
CURRENT flips only when every file is on disk, so readers and crashes only ever see a whole
generation. The previous generation is kept for readers in other processes that may still be
opening it; hard links make deleting older ones safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from bot.errors import KnowledgeBaseError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
RM_NAMESPACE = "supportbot/faiss"
COMPACT_DEAD_SHARE = 0.25  # removed rows above this share of all rows: rewrite as one segment
MAX_SEGMENTS = 16
WORK = "tmp-work"  # one writer at a time (the lock), so one fixed work folder


def new_faiss(embeddings, dim: int):
    """An empty inner-product FAISS store over normalized vectors, scores = cosine similarity.

    The wrapper's default relevance functions are wrong for this (STACK-NOTES): pass identity.
    """
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy

    return FAISS(
        embedding_function=embeddings,
        index=faiss.IndexFlatIP(dim),
        docstore=InMemoryDocstore({}),
        index_to_docstore_id={},
        relevance_score_fn=lambda score: score,
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )


@dataclass
class Manifest:
    signature: str = ""
    files: dict[str, dict] = field(default_factory=dict)  # rel -> {"sha256": str, "chunks": int, "stat"?: list}


@dataclass(frozen=True)
class Segment:
    name: str
    ids: tuple[str, ...]  # row order of its vectors
    dead: frozenset[str] = frozenset()  # removed since it was written

    @property
    def live(self) -> int:
        return len(self.ids) - len(self.dead)


@dataclass
class Layout:
    """The segments one generation is made of: what the next sync links instead of rewriting."""

    segments: list[Segment] = field(default_factory=list)

    def owners(self) -> dict[str, Segment]:
        return {i: s for s in self.segments for i in s.ids if i not in s.dead}


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_generation(work: Path, vs, manifest: Manifest, base: tuple[Path, Layout] | None = None,
                    encoder: ManifestEncoder | None = None) -> Layout:
    """Write `vs` into the work folder: as a delta over `base` (the live generation) where it pays."""
    ids = [vs.index_to_docstore_id[i] for i in range(vs.index.ntotal)]
    layout = _delta(base[1], ids) if base is not None else None
    if layout is not None:
        try:
            _write_delta(work, vs, ids, layout, base)
        except FileNotFoundError as err:  # the live generation lost a file since it was read: `vs` has it all
            log.warning("%s is gone from the live index; writing the index whole", err.filename)
            for path in work.glob("seg-*"):
                path.unlink()
            layout = None
    if layout is None:  # compact: the whole index as one segment
        layout = Layout([Segment(_segment_name(), tuple(ids))] if ids else [])
        if ids:
            _write_segment(work, layout.segments[0].name, vs, list(range(len(ids))))
    spec = {"version": FORMAT_VERSION, "segments": [{"name": s.name, "dead": sorted(s.dead)} for s in layout.segments]}
    _fsync_write(work / "segments.json", json.dumps(spec).encode())
    _write_manifest(work / "files.json", manifest, encoder)
    return layout


def _write_delta(work: Path, vs, ids: list[str], layout: Layout, base: tuple[Path, Layout]) -> None:
    """Hard-link the segments `layout` shares with `base`, and write its new one."""
    written = {s.name for s in base[1].segments}
    for seg in layout.segments:
        if seg.name in written:
            for suffix in (".faiss", ".json"):
                _link(base[0] / f"{seg.name}{suffix}", work / f"{seg.name}{suffix}")
        else:
            new = set(seg.ids)
            _write_segment(work, seg.name, vs, [p for p, i in enumerate(ids) if i in new])


def _delta(previous: Layout, ids: list[str]) -> Layout | None:
    """`ids` as `previous` plus one new segment and more removed rows; None when compacting pays."""
    owners = previous.owners()
    added = tuple(i for i in ids if i not in owners)
    removed: dict[str, set[str]] = {}
    for i in owners.keys() - set(ids):
        removed.setdefault(owners[i].name, set()).add(i)
    segments = []
    for seg in previous.segments:
        seg = Segment(seg.name, seg.ids, seg.dead | removed.get(seg.name, set()))
        if seg.live:  # a segment with nothing left in it is dropped
            segments.append(seg)
    if added:
        segments.append(Segment(_segment_name(), added))
    rows = sum(len(s.ids) for s in segments)
    dead = sum(len(s.dead) for s in segments)
    if not segments or dead > COMPACT_DEAD_SHARE * rows or len(segments) > MAX_SEGMENTS:
        return None
    return Layout(segments)


def _segment_name() -> str:
    return f"seg-{time.time_ns():x}"  # writers are serialised by the lock: unique in a data dir


def _write_segment(work: Path, name: str, vs, positions: list[int]) -> None:
    import faiss

    index = faiss.IndexFlatIP(vs.index.d)
    if positions:
        index.add(vs.index.reconstruct_batch(np.asarray(positions, dtype=np.int64)))
    ids = [vs.index_to_docstore_id[p] for p in positions]
    passages = []
    for doc_id in ids:
        doc = vs.docstore.search(doc_id)
        passages.append({"page_content": doc.page_content, "metadata": doc.metadata})
    _fsync_write(work / f"{name}.faiss", faiss.serialize_index(index).tobytes())
    payload = {"version": FORMAT_VERSION, "ids": ids, "passages": passages}
    _fsync_write(work / f"{name}.json", json.dumps(payload, ensure_ascii=False).encode())


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links: a copy is as good, only slower
        shutil.copyfile(src, dst)
        with open(dst, "rb") as fh:
            os.fsync(fh.fileno())


def load_generation(gen: Path, embeddings, dim: int):
    """Read one generation back as (vectorstore, manifest, layout). Raises KnowledgeBaseError when damaged."""
    import faiss
    from langchain_core.documents import Document

    ids, passages, vectors, segments = [], [], [], []
    try:
        spec = json.loads((gen / "segments.json").read_text(encoding="utf-8"))
        if spec.get("version") != FORMAT_VERSION:
            raise ValueError(f"format {spec.get('version')}; this supportbot reads format {FORMAT_VERSION}")
        for item in spec["segments"]:
            name, dead = item["name"], frozenset(item["dead"])
            index = faiss.deserialize_index(np.frombuffer((gen / f"{name}.faiss").read_bytes(), dtype=np.uint8))
            payload = json.loads((gen / f"{name}.json").read_text(encoding="utf-8"))
            seg_ids, seg_passages = payload["ids"], payload["passages"]
            if index.d != dim or index.ntotal != len(seg_ids) or len(seg_passages) != len(seg_ids):
                raise ValueError(f"{name}: {index.ntotal} vectors of size {index.d} for {len(seg_ids)} ids, "
                                 f"{len(seg_passages)} passages of size {dim}")
            if not dead <= set(seg_ids):
                raise ValueError(f"{name}: removed ids it never held")
            keep = [p for p, i in enumerate(seg_ids) if i not in dead]
            ids += [seg_ids[p] for p in keep]
            passages += [seg_passages[p] for p in keep]
            vectors.append(index.reconstruct_n(0, index.ntotal)[keep] if keep else np.zeros((0, dim), np.float32))
            segments.append(Segment(name, tuple(seg_ids), dead))
        if len(set(ids)) != len(ids):
            raise ValueError("a passage in two segments")
        files = json.loads((gen / "files.json").read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        legacy = (gen / "passages.json").is_file()
        raise KnowledgeBaseError(
            f"the index in {gen} is {'from an older supportbot' if legacy else f'incomplete ({err.filename} is missing)'}",
            "run `supportbot sync --rebuild` to build it again (a plain sync does it too)",
        ) from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise KnowledgeBaseError(
            f"the index in {gen} is damaged ({err})", "run `supportbot sync --rebuild` to build it again"
        ) from None
    vs = new_faiss(embeddings, dim)
    if ids:
        vs.index.add(np.concatenate(vectors))
    vs.docstore.add({i: Document(id=i, **p) for i, p in zip(ids, passages)})
    vs.index_to_docstore_id = dict(enumerate(ids))
    return vs, Manifest(files.get("signature", ""), files.get("files", {})), Layout(segments)


def _stored_vectors(gen: Path) -> int | None:
    """Live vectors in a generation from its segment list and FAISS headers alone (None: unreadable)."""
    try:
        spec = json.loads((gen / "segments.json").read_text(encoding="utf-8"))
        total = 0
        for item in spec["segments"]:
            with open(gen / f"{item['name']}.faiss", "rb") as fh:
                # FAISS flat-index header: 4-byte type tag, int32 dimension, int64 vector count.
                total += int.from_bytes(fh.read(16)[8:16], "little") - len(item["dead"])
        return total
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_manifest(gen: Path) -> Manifest:
    """A generation's file list; an empty one (everything re-checked) when it cannot be read."""
    try:
        data = json.loads((gen / "files.json").read_text(encoding="utf-8"))
        return Manifest(data.get("signature", ""), data.get("files", {}))
    except (OSError, ValueError):
        log.warning("file list of %s unreadable; every file will be re-checked", gen)
        return Manifest()


def counts_agree(gen: Path, manifest: Manifest) -> bool:
    """Cheap integrity check of a generation: records and vectors both match the file list's counts."""
    import sqlite3

    expected = sum(f["chunks"] for f in manifest.files.values())
    try:
        with contextlib.closing(sqlite3.connect(f"file:{gen / 'records.sqlite'}?mode=ro", uri=True)) as db:
            (records,) = db.execute("select count(*) from upsertion_record where namespace = ?", (RM_NAMESPACE,)).fetchone()
    except sqlite3.Error:
        return False
    return records == expected == _stored_vectors(gen)


def rewrite_manifest(gen: Path, manifest: Manifest, encoder: ManifestEncoder | None = None) -> None:
    """Replace a live generation's file list atomically: only for the stat cache, never the content."""
    tmp = gen / "files.json.tmp"
    _write_manifest(tmp, manifest, encoder)
    os.replace(tmp, gen / "files.json")


def _write_manifest(path: Path, manifest: Manifest, encoder: ManifestEncoder | None = None) -> None:
    _fsync_write(path, (encoder or ManifestEncoder()).encode(manifest))


class ManifestEncoder:
    """files.json, byte for byte `json.dumps` of the whole, with each file's entry encoded once and
    reused while it stays equal: a sync changes a few entries of thousands, and encoding them all
    took 3.4 ms of a one-file sync at 1,000 files (its 19-digit stat times are slow to format)."""

    def __init__(self) -> None:
        self._texts: dict[str, tuple[dict, str]] = {}  # rel -> (a copy of the entry as encoded, its text)

    def encode(self, manifest: Manifest) -> bytes:
        texts = {}
        for rel, meta in sorted(manifest.files.items()):  # sorted by name; each entry's own keys as they are
            hit = self._texts.get(rel)
            if hit is None or hit[0] != meta:
                text = json.dumps(meta, ensure_ascii=False)
                hit = (json.loads(text), f"{json.dumps(rel, ensure_ascii=False)}: {text}")
            texts[rel] = hit
        self._texts = texts
        tail = json.dumps({"signature": manifest.signature, "version": FORMAT_VERSION}, ensure_ascii=False)
        return ('{"files": {' + ", ".join(t for _, t in texts.values()) + "}, " + tail[1:]).encode()


def open_record_manager(path: Path):
    """The record manager of a work folder (see `bot.recordmanager` for why it may skip fsyncs)."""
    from bot.recordmanager import SqliteRecordManager

    rm = SqliteRecordManager(RM_NAMESPACE, path)
    rm.create_schema()
    return rm


class IndexStore:
    """The generations under one data directory, and the lock that serialises writers."""

    def __init__(self, root: Path):
        self.root = root

    def current(self) -> Path | None:
        try:
            name = (self.root / "CURRENT").read_text().strip()
        except FileNotFoundError:
            return None
        gen = self.root / name
        return gen if name.startswith("gen-") and gen.is_dir() else None

    @contextlib.contextmanager
    def writer(self, timeout: float = 600.0) -> Iterator[None]:
        """Exclusive lock across processes (a CLI sync and a serving bot never write at once)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "sync.lock", "a+") as fh:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise KnowledgeBaseError(
                            f"another sync has held {self.root / 'sync.lock'} for {timeout:.0f} s",
                            "wait for it to finish, or stop the other supportbot process",
                        ) from None
                    time.sleep(0.1)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def begin(self, seed: bool = True) -> Path:
        """A fresh work folder, seeded with the live record manager unless `seed` is False
        (the copy is what a sync edits). Call it holding `writer()`."""
        for stale in self.root.glob("tmp-*"):  # left by a crashed sync: never live, safe to drop
            shutil.rmtree(stale, ignore_errors=True)
        work = self.root / WORK
        work.mkdir(parents=True)
        live = self.current()
        if seed and live is not None and (live / "records.sqlite").is_file():
            shutil.copyfile(live / "records.sqlite", work / "records.sqlite")
        return work

    def commit(self, work: Path) -> Path:
        """Make `work` the live generation: rename, then flip CURRENT atomically."""
        with open(work / "records.sqlite", "rb+") as fh:  # written without fsyncs (see bot.recordmanager)
            os.fsync(fh.fileno())
        _fsync_dir(work)
        live = self.current()
        number = int(live.name.split("-")[1]) + 1 if live else 1
        gen = self.root / f"gen-{number:06d}"
        os.rename(work, gen)
        tmp = self.root / "CURRENT.tmp"
        _fsync_write(tmp, gen.name.encode())
        os.replace(tmp, self.root / "CURRENT")
        _fsync_dir(self.root)
        keep = {gen.name, live.name if live else ""}
        for old in self.root.glob("gen-*"):
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
        return gen
