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

from bot.grounding import NUMBER, sentences

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
        lines += sentences(_LIST_MARK.sub("", text), min_chars=1)
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


def allowed_digits(answer: str, numbers: list[str]) -> set[str] | None:
    """Digits that keep the number being written (after a currency sign, or already begun) a prefix
    of some number in the passages; None where no number is being written."""
    tail = _NUMBER_TAIL.search(answer)
    partial = tail.group(0).lstrip("$€£") if tail else ""
    if not partial and not answer.endswith(("$", "€", "£")):
        return None
    return {n[len(partial)] for n in numbers if n.startswith(partial) and len(n) > len(partial)
            and n[len(partial)].isdigit()}


class CopyDigits:
    """A transformers LogitsProcessor (duck-typed: called with input_ids and scores).

    Strong where the passages say exactly what comes next (the answer's last `strong_match`
    characters, or the start of its current sentence, follow a passage): that digit, or no digit.
    Soft elsewhere: a number the answer is writing must stay a prefix of a number in the passages,
    and the model picks among those digits. A short generic match ("costs $") never forces a digit.
    """

    def __init__(self, tokenizer, passages: list[str], prompt_len: int, digits: dict[str, list[int]],
                 strong_match: int = 16):
        self.tokenizer = tokenizer
        self.evidence = sentence_lines(passages)
        self.numbers = sorted({m.group(0).rstrip(".,:") for m in NUMBER.finditer(self.evidence)})
        self.prompt_len = prompt_len
        self.digits = digits
        self.all_digits = [t for ids in digits.values() for t in ids]
        self.strong_match = strong_match

    def __call__(self, input_ids, scores):
        if not self.all_digits or not self.evidence:
            return scores
        answer = self.tokenizer.decode(input_ids[0, self.prompt_len:], skip_special_tokens=True)
        follow = next_char(answer, self.evidence, self.strong_match)
        if follow is not None:
            if follow.isdigit() and follow in self.digits:  # the passage's digit, and nothing else
                keep = scores[0, self.digits[follow]].clone()
                scores[0, :] = float("-inf")
                scores[0, self.digits[follow]] = keep
                return scores
            if _NUMBER_TAIL.search(answer):  # the passage's number ends here: so does the answer's
                scores[0, self.all_digits] = float("-inf")
                return scores
        allowed = allowed_digits(answer, self.numbers)
        if allowed is not None:
            banned = [t for d, ids in self.digits.items() if d not in allowed for t in ids]
            scores[0, banned] = float("-inf")
        return scores
