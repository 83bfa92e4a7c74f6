"""Copy-friendly decoding: digits that continue a passage's wording are copied from the passage.

A small model reproduces the wording around a fact well and the digits badly: it writes
"international returns cost a flat $2" where the passage says "a flat $15". When the end of the
answer so far matches a stretch of a passage (at least `min_match` characters, the longest match
wins, earlier passages first) and the passage goes on with a digit, only that digit may come next;
when the passage goes on with anything else after a number, no further digit may. Where the
answer's wording is not in any passage, nothing is constrained. This is prompt-lookup copying
limited to numbers, which are the values users act on and the ones a wrong digit makes wrong.
"""

from __future__ import annotations

import re

_NUMBER_TAIL = re.compile(r"[$€£]?\d[\d.,:]*$")


def digit_tokens(tokenizer) -> dict[str, list[int]]:
    """Token ids whose text is exactly one digit, by digit (tokenizers that split digits have them)."""
    out: dict[str, list[int]] = {}
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid])
        if len(text) == 1 and text.isdigit():
            out.setdefault(text, []).append(tid)
    return out


_SENTENCE_END = re.compile(r"[.!?:]\s+|\n")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+\.)\s+|\*\*", re.M)


def sentence_lines(passages: list[str]) -> str:
    """The passages with one sentence per line (list markers and bold marks dropped), each line
    starting with "\n": a sentence start can be found as "\n" + the answer's sentence so far."""
    lines = []
    for text in passages:
        for s in re.split(r"(?<=[.!?])\s+|\n+", _LIST_MARK.sub("", text)):
            if s.strip():
                lines.append(s.strip())
    return "\n" + "\n".join(lines) + "\n"


def next_char(answer: str, evidence: str, min_match: int = 6, max_match: int = 48) -> str | None:
    """The character that follows the longest passage stretch matching the end of `answer`, or,
    for a sentence shorter than `min_match` so far, the passage sentence it starts."""
    for k in range(min(max_match, len(answer)), min_match - 1, -1):
        at = evidence.find(answer[-k:])
        if at >= 0:
            end = at + k
            return evidence[end] if end < len(evidence) else ""
    ends = list(_SENTENCE_END.finditer(answer))
    fragment = answer[ends[-1].end():] if ends else answer
    if 0 < len(fragment) < min_match:
        at = evidence.find("\n" + fragment)
        if at >= 0:
            end = at + 1 + len(fragment)
            return evidence[end] if end < len(evidence) else ""
    return None


class CopyDigits:
    """A transformers LogitsProcessor (duck-typed: called with input_ids and scores)."""

    def __init__(self, tokenizer, passages: list[str], prompt_len: int, digits: dict[str, list[int]],
                 min_match: int = 6):
        self.tokenizer = tokenizer
        self.evidence = sentence_lines(passages)
        self.prompt_len = prompt_len
        self.digits = digits
        self.all_digits = [t for ids in digits.values() for t in ids]
        self.min_match = min_match

    def __call__(self, input_ids, scores):
        if not self.all_digits or not self.evidence:
            return scores
        answer = self.tokenizer.decode(input_ids[0, self.prompt_len:], skip_special_tokens=True)
        follow = next_char(answer, self.evidence, self.min_match)
        if follow is None:
            return scores
        if follow.isdigit() and follow in self.digits:  # the passage's digit, and nothing else
            keep = scores[0, self.digits[follow]].clone()
            scores[0, :] = float("-inf")
            scores[0, self.digits[follow]] = keep
        elif _NUMBER_TAIL.search(answer):  # the passage's number ends here: so does the answer's
            scores[0, self.all_digits] = float("-inf")
        return scores
