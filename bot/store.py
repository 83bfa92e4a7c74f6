"""Persistence of the index: FAISS + passages + record manager + file manifest, with no pickle.

Layout under `<data-dir>/index/`:
    CURRENT            name of the live generation, replaced atomically (os.replace)
    gen-000042/        one complete, immutable generation:
        vectors.faiss  faiss.write_index (FAISS's own binary format)
        passages.json  ids in FAISS order + page_content + metadata
        records.sqlite LangChain SQLRecordManager (which chunk hashes are indexed, per source)
        files.json     per-file sha256 and chunk count, plus the chunker signature
A sync writes a new generation next to the live one and flips CURRENT only when every file is on
disk, so readers and crashes only ever see a whole generation. The previous generation is kept
for readers in other processes that may still be opening it.
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

FORMAT_VERSION = 1
RM_NAMESPACE = "supportbot/faiss"


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
    files: dict[str, dict] = field(default_factory=dict)  # rel -> {"sha256": str, "chunks": int}


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


def save_generation(gen: Path, vs, manifest: Manifest) -> None:
    import faiss

    ids = [vs.index_to_docstore_id[i] for i in range(vs.index.ntotal)]
    passages = []
    for doc_id in ids:
        doc = vs.docstore.search(doc_id)
        passages.append({"page_content": doc.page_content, "metadata": doc.metadata})
    _fsync_write(gen / "vectors.faiss", faiss.serialize_index(vs.index).tobytes())
    payload = {"version": FORMAT_VERSION, "ids": ids, "passages": passages}
    _fsync_write(gen / "passages.json", json.dumps(payload, ensure_ascii=False).encode())
    files = {"version": FORMAT_VERSION, "signature": manifest.signature, "files": manifest.files}
    _fsync_write(gen / "files.json", json.dumps(files, ensure_ascii=False, sort_keys=True).encode())


def load_generation(gen: Path, embeddings, dim: int):
    """Read one generation back. Raises KnowledgeBaseError when its files are damaged."""
    import faiss
    from langchain_core.documents import Document

    try:
        index = faiss.deserialize_index(np.frombuffer((gen / "vectors.faiss").read_bytes(), dtype=np.uint8))
        payload = json.loads((gen / "passages.json").read_text(encoding="utf-8"))
        files = json.loads((gen / "files.json").read_text(encoding="utf-8"))
        ids, passages = payload["ids"], payload["passages"]
        if payload.get("version") != FORMAT_VERSION or len(ids) != len(passages) != index.ntotal:
            raise ValueError("passages and vectors disagree")
        if index.ntotal != len(ids) or index.d != dim:
            raise ValueError(f"{index.ntotal} vectors of size {index.d} for {len(ids)} passages of size {dim}")
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise KnowledgeBaseError(
            f"the index in {gen} is damaged ({err})", "run `supportbot sync --rebuild` to build it again"
        ) from None
    vs = new_faiss(embeddings, dim)
    vs.index = index
    vs.docstore.add({i: Document(id=i, **p) for i, p in zip(ids, passages)})
    vs.index_to_docstore_id = dict(enumerate(ids))
    return vs, Manifest(files.get("signature", ""), files.get("files", {}))


def open_record_manager(path: Path):
    from langchain_classic.indexes import SQLRecordManager

    rm = SQLRecordManager(RM_NAMESPACE, db_url=f"sqlite:///{path}")
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

    def begin(self) -> Path:
        """A fresh work folder seeded with the live record manager (the copy is what we edit)."""
        for stale in self.root.glob("tmp-*"):  # left by a crashed sync: never live, safe to drop
            shutil.rmtree(stale, ignore_errors=True)
        work = self.root / f"tmp-{os.getpid()}-{time.time_ns()}"
        work.mkdir(parents=True)
        live = self.current()
        if live is not None and (live / "records.sqlite").is_file():
            shutil.copyfile(live / "records.sqlite", work / "records.sqlite")
        return work

    def commit(self, work: Path) -> Path:
        """Make `work` the live generation: rename, then flip CURRENT atomically."""
        with open(work / "records.sqlite", "rb+") as fh:
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
