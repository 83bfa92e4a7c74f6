"""The KV cache of the start a prompt shares with a recent one on the same weights.

Every answer prompt opens the same way: the chat template, the instructions and "Help-center
passages:", about a third of a one-passage prompt on SmolLM2; small talk has its own opening.
Keeping each voice's last few prompts' caches (the keys and values depend on the weights) and
continuing from the longest common prefix skips that part of the prefill; a follow-up question
in one conversation skips more. Each request works on its own copy, so concurrent requests never
share a cache object.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    def __init__(self, min_tokens: int = 16, per_key: int = 2, keys: int = 8):
        self.min_tokens = min_tokens  # shorter shared starts are not worth a copy
        self.per_key = per_key  # prompts kept per voice (answers and small talk open differently)
        self.keys = keys  # weights remembered (voices; a retrained voice is a new key)
        self._kept: OrderedDict[str, list[tuple[list[int], object]]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, ids: list[int]):
        """A private cache holding the first n tokens of `ids`, and n (None, 0 when nothing fits).
        At least the last token is left to compute: generation needs its logits."""
        with self._lock:
            entries = list(self._kept.get(key, ()))
        best, n = None, 0
        for prev, cache in entries:
            shared = min(common_prefix(prev, ids), len(ids) - 1)
            if shared > n:
                best, n = cache, shared
        if best is None or n < self.min_tokens:
            return None, 0
        past = copy.deepcopy(best)
        _cut(past, n)
        return past, n

    def keep(self, key: str, ids: list[int], cache) -> None:
        """Remember `cache` (no longer used by its request) cut to the prompt `ids`."""
        if cache is None or not hasattr(cache, "crop") or cache.get_seq_length() < len(ids):
            return
        _cut(cache, len(ids))
        with self._lock:
            entries = self._kept.setdefault(key, [])
            entries.insert(0, (list(ids), cache))
            del entries[self.per_key:]
            self._kept.move_to_end(key)
            while len(self._kept) > self.keys:
                self._kept.popitem(last=False)


def _cut(cache, length: int) -> None:
    """Keep the first `length` tokens (transformers 5 crops by a negative count to remove)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
