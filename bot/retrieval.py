"""Search over one immutable index view: dense (FAISS) + lexical (BM25), fused by score.

Candidates come from both rankings; each is scored cosine + w * BM25 / (best BM25 of the query).
On doc2dial this beat reciprocal-rank fusion (span-hit@4 0.82 vs 0.78): RRF lets a weak lexical
match outvote a strong dense one, which score fusion does not.

Every passage returned carries its real cosine similarity to the question, whichever ranking
found it; the relevance threshold is applied to the best of those, so the chain can refuse. Near
the threshold cosine alone does not separate the help center's questions from others (an answerable
one at 0.349, "Do you sell refrigerators?" at 0.351), so there the question's own words must be
found in the passages retrieved: a question about things the help center never names is refused.

Twins (the same passage in two files: a page filed or crawled twice) take one slot of the top k,
with the other files listed in `also_in`. On doc2dial, where 23 pages have a twin, twins filled
two of the four slots in 6 of the 17 questions whose page was missing from the top 4.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from bot.config import RetrievalSettings
from bot.lexical import BM25, Lexicon, tokenize



@dataclass(frozen=True)
class Passage:
    n: int  # 1-based rank: the [n] a citation uses
    source: str  # file, relative to the knowledge-base folder
    section: str
    title: str
    text: str  # the passage body, without the "Title > Section" line
    score: float  # cosine similarity with the question, -1..1
    id: str
    also_in: tuple[str, ...] = ()  # other files holding the same passage (twins)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    query: str
    passages: list[Passage]
    threshold: float
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)
    borderline: float = 0.0  # RetrievalSettings.borderline and .min_support
    min_support: float = 0.0
    support: float | None = None  # share of the question's words in the passages; only worked out in the band

    @property
    def in_band(self) -> bool:
        """The best score is within `borderline` of the threshold: the question's words decide."""
        return self.threshold - self.borderline <= self.best_score < self.threshold + self.borderline

    @property
    def best_score(self) -> float:
        return max((p.score for p in self.passages), default=0.0)

    @property
    def relevant(self) -> bool:
        """False: nothing clears the threshold (or, near it, the passages miss most of the question's
        words), and the chain must not answer from these."""
        if not self.passages:
            return False
        if self.in_band:
            return self.support is not None and self.support >= self.min_support
        return self.best_score >= self.threshold

    def to_dict(self) -> dict:
        return {
            "query": self.query,
            "relevant": self.relevant,
            "threshold": self.threshold,
            "best_score": round(self.best_score, 4),
            "support": None if self.support is None else round(self.support, 3),
            "seconds": round(self.seconds, 4),
            "passages": [p.to_dict() for p in self.passages],
        }


class IndexView:
    """A read-only snapshot of the index. Never mutated after construction: safe to share."""

    def __init__(self, vs, generation: str = "", lexicon: Lexicon | None = None, previous: IndexView | None = None):
        """`previous`: the view this one replaces, whose lexical index is reused for the passages
        both hold (a passage id is the hash of its content: same id, same text)."""
        self.vs = vs
        self.generation = generation
        n = vs.index.ntotal
        self.ids = [vs.index_to_docstore_id[i] for i in range(n)]
        stored = vs.docstore._dict  # a plain dict lookup: docstore.search returns a string for a missing id
        self.docs: list[Document] = [stored[i] for i in self.ids]
        self.vectors = vs.index.reconstruct_n(0, n) if n else np.zeros((0, vs.index.d), dtype=np.float32)
        if previous is not None and previous.bm25.lexicon is lexicon and len(previous):
            position = {i: p for p, i in enumerate(self.ids)}
            moved = np.fromiter((position.get(i, -1) for i in previous.ids), dtype=np.int64, count=len(previous))
            was = set(previous.ids)
            added = [p for p, i in enumerate(self.ids) if i not in was]
            self.bm25 = previous.bm25.derive(moved, np.asarray(added, dtype=np.int64),
                                             [self.docs[p].page_content for p in added])
        else:
            self.bm25 = BM25([d.page_content for d in self.docs], lexicon=lexicon, ids=self.ids)
        self._shingles: dict[int, tuple[frozenset, tuple]] = {}  # filled by searches; same values from any thread
        self._lead: np.ndarray | None = None  # see _leads; only a search with lead_bonus needs it

    def __len__(self) -> int:
        return len(self.ids)

    def sources(self) -> dict[str, int]:
        return dict(Counter(d.metadata["source"] for d in self.docs))

    def search(self, query: str, qvec: np.ndarray, params: RetrievalSettings, k: int | None = None) -> SearchResult:
        k = k or params.k
        t0 = time.perf_counter()
        if not len(self):
            return SearchResult(query, [], params.threshold)
        pool = min(max(params.candidates, k), len(self))
        _, dense_idx = self.vs.index.search(qvec.reshape(1, -1).astype(np.float32), pool)
        candidates = {int(i) for i in dense_idx[0] if i >= 0}
        lexical = dict(self.bm25.top(query, pool)) if params.lexical_weight > 0 else {}
        candidates |= lexical.keys()
        order = sorted(candidates)
        cosine = dict(zip(order, (self.vectors[order] @ qvec).tolist()))
        return self.rank(query, cosine, lexical, params, k, t0)

    def rank(self, query: str, cosine: dict[int, float], lexical: dict[int, float], params: RetrievalSettings,
             k: int, t0: float) -> SearchResult:
        """The top k of the candidates (`cosine`: each one's cosine with the question; `lexical`: the
        BM25 scores of the lexical ranking's top), fused, twins collapsed, capped per file. Also how
        `bot.pgstore` ranks the candidates PostgreSQL returns, so both stores answer alike."""
        order = sorted(cosine)
        top_bm25 = max(lexical.values(), default=1.0)
        fused = {i: cosine[i] + params.lexical_weight * lexical.get(i, 0.0) / top_bm25 for i in order}
        if params.lead_bonus:
            lead = self._leads()
            fused = {i: s + params.lead_bonus * lead[i] for i, s in fused.items()}
        enough = k if params.max_per_source <= 0 else len(fused)  # the cap may need candidates past k
        ranked, also = self._collapse_twins(sorted(fused, key=lambda i: -fused[i]), enough)
        best = _diverse(ranked, self.docs, k, params.max_per_source)
        passages = []
        for n, i in enumerate(best, 1):
            doc = self.docs[i]
            body = doc.page_content.split("\n", 1)[-1]
            meta = doc.metadata
            passages.append(Passage(n, meta["source"], meta.get("section", ""), meta.get("title", ""), body,
                                    cosine[i], self.ids[i], tuple(also[i])))
        result = SearchResult(query, passages, params.threshold, borderline=params.borderline,
                              min_support=params.min_support)
        if result.in_band:  # tokenizing the passages costs more than the search: only where it decides
            result.support = word_support(query, [self.docs[i].page_content for i in best])
        result.seconds = time.perf_counter() - t0
        return result

    def _leads(self) -> np.ndarray:
        """1.0 for each file's first passage (lowest offset; the earliest indexed on a tie, as PDF pages
        all start at 0), else 0.0. Built on first use, not per sync: the default search never needs
        it, and any thread building it builds the same array."""
        if self._lead is None:
            first: dict[str, int] = {}
            for i, doc in enumerate(self.docs):
                j = first.setdefault(doc.metadata["source"], i)
                if doc.metadata.get("start", 0) < self.docs[j].metadata.get("start", 0):
                    first[doc.metadata["source"]] = i
            lead = np.zeros(len(self.docs), dtype=np.float32)
            lead[list(first.values())] = 1.0
            self._lead = lead
        return self._lead

    def _collapse_twins(self, order: list[int], enough: int) -> tuple[list[int], dict[int, list[str]]]:
        """The first `enough` of `order` with each passage's twins removed, and their files listed
        against it. Twins rank next to each other (same text, same scores), so stopping there
        loses none of the listed ones in practice.

        Twins share >= 90% of their word triples and every number: a passage that differs in one
        price is not a twin, however close its vector. Vectors only preselect (cosine >= 0.9 held
        all twin pairs on doc2dial), so texts are compared for a few pairs per query.
        """
        kept: list[int] = []
        also: dict[int, list[str]] = {}
        for i in order:
            # pair by pair, not one Gram matrix: a BLAS matmul here left threads spinning that
            # slowed the next FAISS search fivefold on 2 cores
            twin = next((j for j in kept if float(self.vectors[i] @ self.vectors[j]) >= 0.9 and self._twins(i, j)), None)
            if twin is None:
                if len(kept) == enough:
                    break
                kept.append(i)
                also[i] = []
                continue
            source = self.docs[i].metadata["source"]
            if source != self.docs[twin].metadata["source"] and source not in also[twin]:
                also[twin].append(source)
        return kept, also

    def _twins(self, i: int, j: int) -> bool:
        if self.docs[i].page_content == self.docs[j].page_content:
            return True
        (a, na), (b, nb) = self._shingle(i), self._shingle(j)
        return na == nb and len(a & b) >= 0.9 * len(a | b)

    def _shingle(self, i: int) -> tuple[frozenset, tuple]:
        if i not in self._shingles:
            words = _WORDS.findall(self.docs[i].page_content.split("\n", 1)[-1].lower())
            numbers = tuple(sorted(w for w in words if any(c.isdigit() for c in w)))
            self._shingles[i] = (frozenset(zip(words, words[1:], words[2:])), numbers)
        return self._shingles[i]


_WORDS = re.compile(r"[a-z0-9]+(?:[.,:/-][a-z0-9]+)*")


def word_support(query: str, texts: list[str]) -> float:
    """Share of the query's words (bot.lexical's terms) that occur in `texts` (1.0 for a query of
    stopwords only: nothing to miss)."""
    terms = set(tokenize(query))
    if not terms:
        return 1.0
    found = set()
    for text in texts:
        found.update(t for t in tokenize(text) if t in terms)
    return len(found) / len(terms)


def _diverse(order: list[int], docs: list[Document], k: int, cap: int) -> list[int]:
    """Top k, at most `cap` per source file; the cap relaxes only if too few files compete."""
    if cap <= 0:
        return order[:k]
    picked, per, rest = [], {}, []
    for i in order:
        src = docs[i].metadata["source"]
        if per.get(src, 0) < cap:
            per[src] = per.get(src, 0) + 1
            picked.append(i)
        else:
            rest.append(i)
        if len(picked) == k:
            return picked
    return picked + rest[: k - len(picked)]


class KnowledgeRetriever(BaseRetriever):
    """LangChain face of the knowledge base: Documents with score/n/section in metadata."""

    kb: object  # bot.knowledge.KnowledgeBase; typed loosely to keep pydantic out of our classes
    k: int | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        result = self.kb.search(query, k=self.k)
        return [
            Document(page_content=p.text, metadata={**p.to_dict(), "relevant": result.relevant}, id=p.id)
            for p in result.passages
        ]
