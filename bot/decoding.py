"""Greedy decoding in one loop we control: the prompt's start from a cache, and prompt lookup.

transformers' `generate()` gives the same tokens, but its assisted decoding (prompt lookup)
skipped tokens when handed a cache that holds the prompt's start (transformers 5.24; seen in
tests/test_generation.py's setup), and the two together are what pays on a small CPU: the
instructions are the same in every prompt, and answers copy passages.

Prompt lookup: the last few tokens generated are looked up in the prompt and answer so far;
the tokens that followed them there are a draft, checked in the same forward pass as the next
token. The longest prefix of the draft that greedy decoding agrees with is kept, so the output
is the one token-by-token decoding gives (up to float rounding of a batched matmul).
"""

from __future__ import annotations

import functools
from typing import Callable


def draft(tokens: list[int], size: int, extra: list[int] = (), max_ngram: int = 3, min_ngram: int = 2) -> list[int]:
    """Up to `size` tokens that followed the last n tokens (n from `max_ngram` down to
    `min_ngram`) the first time they occurred earlier in `tokens`, else in `extra` (the voice's
    own phrases, which no prompt holds). A single token ("!", ":") recurs everywhere: what
    followed it is rarely what comes next, and a rejected draft costs a wider step."""
    if size <= 0:
        return []
    for n in range(min(max_ngram, len(tokens) - 1), min_ngram - 1, -1):
        tail = tokens[-n:]
        for source, end in ((tokens, len(tokens) - n), (extra, len(extra) - n + 1)):
            for i in range(end):
                if source[i:i + n] == tail:
                    found = list(source[i + n:i + n + size])
                    found = found[:found.index(-1)] if -1 in found else found  # -1 ends a phrase
                    if found:
                        return found
    return []


def new_cache(config):
    """A transformers DynamicCache whose layers grow in place (see `_growing_layer`)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    cache.layers = [_growing_layer()() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@functools.cache
def _growing_layer():
    """DynamicLayer appends each step's keys and values with torch.cat: a copy of the whole cache
    per layer per token (18% of a decoding step on SmolLM2, 2 cores). This one writes into a
    buffer that doubles when full and hands attention a view of the filled part."""
    from transformers.cache_utils import DynamicLayer  # the class is built on first use: heavy import

    class GrowingLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states) -> None:
            super().lazy_initialization(key_states, value_states)
            self._k = self._v = None
            self._n = 0

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, add = self._n, key_states.shape[-2]
            if self._k is None or n + add > self._k.shape[-2]:
                cap = max(256, 2 * (n + add))
                k = key_states.new_empty(*key_states.shape[:-2], cap, key_states.shape[-1])
                v = value_states.new_empty(*value_states.shape[:-2], cap, value_states.shape[-1])
                if n:
                    k[..., :n, :] = self._k[..., :n, :]
                    v[..., :n, :] = self._v[..., :n, :]
                self._k, self._v = k, v
            self._k[..., n:n + add, :] = key_states
            self._v[..., n:n + add, :] = value_states
            self._n = n + add
            self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]
            return self.keys, self.values

        def crop(self, tokens_to_remove: int) -> None:
            super().crop(tokens_to_remove)
            if self.is_initialized:
                self._n = self.keys.shape[-2]

        def __deepcopy__(self, memo):
            new = type(self).__new__(type(self))
            new.__dict__.update(self.__dict__)
            if self.is_initialized and self._k is not None:
                new._k, new._v = self._k.clone(), self._v.clone()
                new.keys, new.values = new._k[..., :self._n, :], new._v[..., :self._n, :]
            return new

    return GrowingLayer


def greedy(model, ids: list[int], *, cache, cached: int, max_new_tokens: int, eos: set[int],
           lookup: int, process: Callable | None, emit: Callable[[list[int]], bool], phrases: list[int] = ()):
    """Generate after `ids` (the first `cached` of them already in `cache`, a transformers Cache),
    handing each step's new tokens to `emit`, which returns True to stop. Returns the cache,
    holding every token but the last."""
    import torch

    if cache is None:
        cache, cached = new_cache(model.config), 0
    device = model.device
    seq = list(ids)
    feed = seq[cached:]
    new = 0
    while new < max_new_tokens:
        guess = draft(seq, min(lookup, max_new_tokens - new - 1), phrases) if new else []
        step = feed + guess
        out = model(input_ids=torch.tensor([step], device=device), cache=cache, use_cache=True,
                    logits_to_keep=len(guess) + 1)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        logits = out.logits[0].float()
        taken: list[int] = []
        for i in range(len(guess) + 1):
            scores = logits[i:i + 1]
            if process is not None:
                scores = process(torch.tensor([seq + taken], device=device), scores)
            token = int(scores[0].argmax())
            taken.append(token)
            if token in eos or i == len(guess) or token != guess[i]:
                break
        rejected = len(guess) - (len(taken) - 1)
        if rejected > 0:  # keys and values of draft tokens that were not kept
            cache.crop(-rejected)
        seq += taken
        new += len(taken)
        feed = taken[-1:]
        if emit(taken) or taken[-1] in eos:
            break
    return cache
