"""Streaming generation with a per-request adapter, that stops when the reader stops.

Greedy decoding (the default) runs bot/decoding.py's loop, with the prompt's start from the
prefix cache (bot/prefix.py) and prompt lookup; sampling runs transformers' `generate()`. Either
runs in its own thread and feeds a `TextIteratorStreamer`; after each step a check watches a
`threading.Event`, set when the caller asks (a stop button) and when the reader goes away (the
generator is closed or garbage-collected), so an abandoned stream frees the model within one
step instead of generating on for seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from bot.adapters import AdapterRegistry
from bot.config import ModelSettings
from bot.decoding import greedy
from bot.model import LoadedModel
from bot.prefix import PrefixCache

log = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    stopped: bool = False  # ended by the event rather than by EOS or the length limit
    looped: bool = False  # ended because the last model.loop_tokens tokens repeated earlier ones
    seconds: float = 0.0  # from the first new tokens to the last
    first_tokens: int = 1  # how many came with the first step (more than one with prompt lookup)
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def decode_rate(self) -> float | None:
        """Tokens per second after the first step (the prompt's prefill), or None for a short answer."""
        after = self.new_tokens - self.first_tokens
        return round(after / self.seconds, 2) if self.seconds > 0.05 and after >= 4 else None


def repeats(tokens: list[int], n: int) -> bool:
    """Whether the last `n` tokens already occur, in order, earlier in `tokens`."""
    if len(tokens) < 2 * n:
        return False
    tail = tokens[-n:]
    return any(tokens[i:i + n] == tail for i in range(len(tokens) - 2 * n + 1))


class Generator:
    def __init__(self, loaded: LoadedModel, adapters: AdapterRegistry, settings: ModelSettings):
        self.loaded = loaded
        self.adapters = adapters
        self.settings = settings
        self._digits: dict[str, list[int]] | None = None  # digit token ids, for copy_from
        self._prefix = PrefixCache() if settings.prefix_cache else None
        self._phrase_ids: dict = {}

    def stream(
        self,
        messages: list[dict],
        adapter: str | None = None,
        stop: threading.Event | None = None,
        max_new_tokens: int | None = None,
        stats: GenerationStats | None = None,
        copy_from: list[str] | None = None,
        min_new_tokens: int = 0,
    ) -> Iterator[str]:
        """Yield text pieces of the model's reply to `messages`, generated with `adapter`.

        `copy_from`: passage texts whose digits are copied where the answer follows their wording
        (bot/copying.py). `min_new_tokens`: end-of-text is not allowed before (benchmarks).
        """
        import torch
        from transformers import TextIteratorStreamer

        self.adapters.check(adapter)  # unknown adapter: fail before starting a thread
        halt = threading.Event()  # set when the reader is done or gone; `stop` is the caller's
        stats = stats or GenerationStats()
        tok = self.loaded.tokenizer
        ids = self.loaded.encode(messages)
        stats.prompt_tokens = len(ids)
        budget = max_new_tokens or self.settings.max_new_tokens
        budget = max(1, min(budget, self.loaded.context - len(ids)))
        streamer = TextIteratorStreamer(tok, skip_special_tokens=True, timeout=600)
        first: list[float] = []
        said: list[int] = []
        loop = self.settings.loop_tokens

        def emit(tokens: list[int]) -> bool:
            """Stream the step's new tokens; True to stop (the reader, or a loop)."""
            said.extend(tokens)
            stats.new_tokens = len(said)
            now = time.perf_counter()
            if not first:
                first.append(now)
                stats.first_tokens = stats.new_tokens
            stats.seconds = now - first[0]
            streamer.put(torch.tensor(tokens))
            if halt.is_set() or (stop is not None and stop.is_set()):
                stats.stopped = True
                return True
            if loop and len(said) >= 2 * loop and repeats(said, loop):
                stats.looped = True
                return True
            return False

        processors = []
        if copy_from:
            from bot.copying import CopyDigits, digit_tokens

            if self._digits is None:
                self._digits = digit_tokens(tok)
            processors.append(CopyDigits(tok, copy_from, len(ids), self._digits))
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        if min_new_tokens:
            processors.append(_NoEndBefore(len(ids) + min_new_tokens, eos))

        def process(seq, scores):
            for p in processors:
                scores = p(seq, scores)
            return scores

        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self.adapters.using(adapter), torch.inference_mode():
                    if self.settings.temperature > 0:
                        self._sample(ids, budget, process, emit, eos)
                        return
                    key = self.adapters.served()
                    cache, stats.cached_tokens = self._prefix.take(key, ids) if self._prefix else (None, 0)
                    cache = greedy(self.loaded.model, ids, cache=cache, cached=stats.cached_tokens,
                                   max_new_tokens=budget, eos=eos, lookup=self.settings.prompt_lookup,
                                   process=process if processors else None, emit=emit,
                                   phrases=self._phrases(adapter))
                    if self._prefix is not None and not stats.stopped:
                        self._prefix.keep(key, ids, cache)
            except BaseException as err:  # surfaced to the reader below
                failure.append(err)
            finally:
                streamer.end()
                stats.done.set()

        worker = threading.Thread(target=run, name="supportbot-generate", daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
            worker.join()
            if failure:
                raise failure[0]
        finally:
            halt.set()  # reader done or gone: free the model at the next token

    def _phrases(self, adapter: str | None) -> list[int]:
        """The voice's own phrases (its card's opener, closer and markers) as tokens, for prompt
        lookup: a voice's answers open with words no prompt holds."""
        card = self.adapters.card(adapter) if adapter else {}
        markers = card.get("markers") if isinstance(card.get("markers"), list) else []
        texts = [str(t).strip() for t in (card.get("opener"), card.get("closer"), *markers) if t]
        key = (adapter, tuple(texts))
        if key not in self._phrase_ids:
            tok, out = self.loaded.tokenizer, []
            for text in texts:  # as a message starts, and inside a sentence
                for variant in (text, " " + text):
                    out += tok(variant, add_special_tokens=False)["input_ids"] + [-1]  # -1: no token follows
            self._phrase_ids[key] = out
        return self._phrase_ids[key]

    def _sample(self, ids, budget, process, emit, eos) -> None:
        """Sampling (model.temperature > 0): transformers' generate(), each token through `emit`."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        class _Emit(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                stop = emit(input_ids[0, -1:].tolist())
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        device = self.loaded.model.device
        self.loaded.model.generate(
            input_ids=torch.tensor([ids], device=device),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
            max_new_tokens=budget, do_sample=True, temperature=self.settings.temperature,
            logits_processor=LogitsProcessorList([process]), stopping_criteria=StoppingCriteriaList([_Emit()]),
            pad_token_id=self.loaded.tokenizer.pad_token_id, eos_token_id=sorted(eos) or None)


class _NoEndBefore:
    """A logits processor: end-of-text is not allowed before the sequence reaches `length`."""

    def __init__(self, length: int, eos: set[int]):
        self.length, self.eos = length, sorted(eos)

    def __call__(self, seq, scores):
        if seq.shape[1] < self.length and self.eos:
            scores[:, self.eos] = float("-inf")
        return scores
