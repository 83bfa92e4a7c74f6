"""Shared fixtures: the real bundled MiniLM (loaded once), and throwaway knowledge bases."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHIPPED_KB = REPO / "knowledge_base"


@pytest.fixture(scope="session")
def embeddings():
    from bot.app import quiet_libraries
    from bot.embeddings import LocalEmbeddings

    quiet_libraries()
    return LocalEmbeddings()


from langchain_core.embeddings import Embeddings


class CountingEmbeddings(Embeddings):
    """The real embeddings, counting what they are asked to embed (to prove what is re-embedded)."""

    def __init__(self, inner):
        self.inner, self.dim, self.on_batch, self.embedded = inner, inner.dim, None, []

    def embed_documents(self, texts):
        self.embedded.extend(texts)
        out = self.inner.embed_documents(texts)
        if self.on_batch:
            self.on_batch(len(texts))
        return out

    def embed_query(self, text):
        return self.inner.embed_query(text)


@pytest.fixture
def make_kb(tmp_path, embeddings):
    """make_kb(files={rel: text}, **settings) -> KnowledgeBase over tmp_path/kb, index in tmp_path/data."""
    from bot.config import Settings
    from bot.knowledge import KnowledgeBase

    def make(files: dict[str, str | bytes] | None = None, copy_shipped: bool = False, **knowledge):
        kb_dir = tmp_path / "kb"
        if copy_shipped and not kb_dir.exists():
            shutil.copytree(SHIPPED_KB, kb_dir)
        kb_dir.mkdir(exist_ok=True)
        for rel, content in (files or {}).items():
            write(kb_dir / rel, content)
        settings = Settings(kb=kb_dir, data_dir=tmp_path / "data")
        for key, value in knowledge.items():
            setattr(settings.knowledge, key, value)
        return KnowledgeBase(settings.validate(), CountingEmbeddings(embeddings))

    return make


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def index_content(kb) -> set[tuple[str, str]]:
    """What the live index holds, as (source, passage) pairs: the thing a clean build must match."""
    view = kb.view()
    return {(d.metadata["source"], d.page_content) for d in view.docs}


def clean_build(kb_dir: Path, tmp: Path, embeddings) -> set[tuple[str, str]]:
    from bot.config import Settings
    from bot.knowledge import KnowledgeBase

    fresh = KnowledgeBase(Settings(kb=kb_dir, data_dir=tmp).validate(), embeddings)
    fresh.sync()
    return index_content(fresh)
