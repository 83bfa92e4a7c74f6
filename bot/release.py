"""Release generated text sentence by sentence, each only once it has been checked.

Nothing shown to a customer is taken back: the model's words are held until a sentence is whole
(its end mark and any [n] citations after it), then `accept(sentence)` decides. An accepted
sentence is released (possibly amended: a citation put right); the first refused one ends the answer, and neither it nor anything after it
is shown. A sentence the answer already said is a loop, and ends the answer too. Plain code:
tested without a model.
"""

from __future__ import annotations

import re
from typing import Callable, Union

# A sentence ends at . ! ? or a line break, after which come any citations and then whitespace
# followed by more text: only then is it known that no further "[n]" belongs to it.
_END = re.compile(r"(?:[.!?](?:\s*\[\d{1,2}\])*|\n)\s+(?=[^\s\[])")


def _norm(sentence: str) -> str:
    return " ".join(re.findall(r"[\w$€£%@]+", re.sub(r"\[\d{1,2}\]", " ", sentence).lower()))


class SentenceGate:
    def __init__(self, accept: Callable[[str], Union[bool, str]]):
        """`accept(sentence)`: False to refuse it, True to release it, or the text to release instead."""
        self.accept = accept
        self.released: list[str] = []
        self.refused = ""  # the sentence that ended the answer ("" when none did)
        self.looped = False
        self._buffer = ""
        self._seen: set[str] = set()
        self._passing = False

    @classmethod
    def passing(cls) -> "SentenceGate":
        """A gate that checks nothing and holds nothing back: text is released as it comes."""
        gate = cls(lambda _: True)
        gate._passing = True
        return gate

    @property
    def closed(self) -> bool:
        return bool(self.refused) or self.looped

    @property
    def text(self) -> str:
        return "".join(self.released).strip()

    def feed(self, piece: str) -> list[str]:
        """Text to show now (possibly none); after a refusal, always none."""
        if self.closed:
            return []
        if self._passing:
            self.released.append(piece)
            return [piece]
        self._buffer += piece
        out: list[str] = []
        while not self.closed:
            m = _END.search(self._buffer)
            if not m:
                break
            sentence, self._buffer = self._buffer[: m.end()], self._buffer[m.end():]
            out += self._judge(sentence)
        return out

    def finish(self) -> list[str]:
        """The last sentence (the stream has ended), if it checks out."""
        if self.closed or not self._buffer.strip():
            return []
        sentence, self._buffer = self._buffer, ""
        return self._judge(sentence)

    def _judge(self, sentence: str) -> list[str]:
        key = _norm(sentence)
        if key and key in self._seen:
            self.looped = True
            return []
        verdict = self.accept(sentence) if sentence.strip() else True
        if not verdict:
            self.refused = sentence.strip()
            return []
        if isinstance(verdict, str):  # accepted as amended (a citation put right)
            sentence = verdict
        self._seen.add(key)
        self.released.append(sentence)
        return [sentence]
