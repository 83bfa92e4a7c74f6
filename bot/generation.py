"""Streaming generation with a per-request adapter, that stops when the reader stops.

`generate()` runs in its own thread and feeds a `TextIteratorStreamer`; a stopping criterion
watches a `threading.Event`. The event is set when the caller asks (a stop button) and when the
reader goes away (the generator is closed or garbage-collected), so an abandoned stream frees
the model within one token instead of generating on for seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from bot.adapters import AdapterRegistry
from bot.config import ModelSettings
from bot.model import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    stopped: bool = False  # ended by the event rather than by EOS or the length limit
    looped: bool = False  # ended because the last model.loop_tokens tokens repeated earlier ones
    seconds: float = 0.0  # from the first new token to the last (decode speed: (new_tokens - 1) / seconds)
    done: threading.Event = field(default_factory=threading.Event)


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

    def stream(
        self,
        messages: list[dict],
        adapter: str | None = None,
        stop: threading.Event | None = None,
        max_new_tokens: int | None = None,
        stats: GenerationStats | None = None,
        copy_from: list[str] | None = None,
        **generate_kwargs,
    ) -> Iterator[str]:
        """Yield text pieces of the model's reply to `messages`, generated with `adapter`.

        `copy_from`: passage texts whose digits are copied where the answer follows their wording
        (bot/copying.py).
        """
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        self.adapters.check(adapter)  # unknown adapter: fail before starting a thread
        halt = threading.Event()  # set when the reader is done or gone; `stop` is the caller's
        stats = stats or GenerationStats()
        tok = self.loaded.tokenizer
        ids = self.loaded.encode(messages)
        stats.prompt_tokens = len(ids)
        budget = max_new_tokens or self.settings.max_new_tokens
        budget = max(1, min(budget, self.loaded.context - len(ids)))
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        first = [time.perf_counter()]
        loop = self.settings.loop_tokens

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                stats.new_tokens = input_ids.shape[1] - len(ids)
                now = time.perf_counter()
                if stats.new_tokens == 1:
                    first[0] = now
                stats.seconds = now - first[0]
                if halt.is_set() or (stop is not None and stop.is_set()):
                    stats.stopped = True
                    return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                if loop and stats.new_tokens >= 2 * loop and repeats(input_ids[0, len(ids):].tolist(), loop):
                    stats.looped = True
                    return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        sampling = {"do_sample": False}
        if self.settings.temperature > 0:
            sampling = {"do_sample": True, "temperature": self.settings.temperature}
        kwargs = dict(
            input_ids=torch.tensor([ids], device=self.loaded.model.device),
            attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=self.loaded.model.device),
            max_new_tokens=budget,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_Stop()]),
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            **sampling,
            **generate_kwargs,
        )
        if copy_from:
            from bot.copying import CopyDigits, digit_tokens

            if self._digits is None:
                self._digits = digit_tokens(tok)
            kwargs["logits_processor"] = LogitsProcessorList([CopyDigits(tok, copy_from, len(ids), self._digits)])
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with self.adapters.using(adapter), torch.inference_mode():
                    self.loaded.model.generate(**kwargs)
            except BaseException as err:  # surfaced to the reader below
                failure.append(err)
                streamer.end()
            finally:
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
