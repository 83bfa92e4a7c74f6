"""BM25 over passages, with precomputed per-term weights so a query costs a few numpy adds.

rank_bm25 rescans every document per query term; at 10k passages that alone is ~10 ms.
Here each term's posting list holds (passage index, final BM25 weight), built once per index view.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be been being below between both but by
    can could did do does doing don down during each few for from further had has have having he her
    here hers him his how i if in into is it its itself just let me more most my no nor not of off on
    once only or other our out over own please same she should so some such than that the their them
    then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours hi hello hey thanks thank need want know
    tell like get help""".split()
)


def _stem(token: str) -> str:
    # Deliberately crude: folds plurals and -ing/-ed so "refunds"/"refunded" meet "refund".
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 5 and token.endswith("ing"):
        return token[:-3]
    if len(token) > 4 and token.endswith("ed"):
        return token[:-2]
    if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
        return token[:-1]
    return token


def tokenize(text: str) -> list[str]:
    return [_stem(t) for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


class BM25:
    def __init__(self, texts: list[str], k1: float = 1.2, b: float = 0.75):
        self.n = len(texts)
        counts = [Counter(tokenize(t)) for t in texts]
        lengths = np.array([sum(c.values()) for c in counts], dtype=np.float32)
        avg = float(lengths.mean()) if self.n else 1.0
        norm = k1 * (1 - b + b * lengths / max(avg, 1e-9))
        docs: dict[str, list[int]] = defaultdict(list)
        tfs: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(counts):
            for term, tf in c.items():
                docs[term].append(i)
                tfs[term].append(tf)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, idx in docs.items():
            idx_a = np.asarray(idx, dtype=np.int64)
            tf = np.asarray(tfs[term], dtype=np.float32)
            idf = math.log(1 + (self.n - len(idx) + 0.5) / (len(idx) + 0.5))
            self.postings[term] = (idx_a, (idf * tf * (k1 + 1) / (tf + norm[idx_a])).astype(np.float32))

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.float32)
        for term in set(tokenize(query)):
            hit = self.postings.get(term)
            if hit is not None:
                out[hit[0]] += hit[1]
        return out

    def top(self, query: str, n: int) -> list[tuple[int, float]]:
        scores = self.scores(query)
        n = min(n, self.n)
        if n == 0:
            return []
        idx = np.argpartition(-scores, n - 1)[:n]
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        return [(int(i), float(scores[i])) for i in idx if scores[i] > 0]
