"""The grounding check: values in an answer that none of its cited passages contain.

A support bot must not state a wrong price. After generation, the values that matter (prices,
numbers, durations, dates, times, e-mail addresses, phone numbers, URLs, product and plan names)
are pulled out of the answer and looked up in the passages it cites; the ones found nowhere are
flagged. Plain functions: tested without a model.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from bot.lexical import tokenize

CITATION = re.compile(r"\[(\d{1,2})\]")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
URL = re.compile(r"(?:https?://|www\.)[^\s<>\"')\]]+")
PHONE = re.compile(r"\+?\(?\d[\d\s().-]{5,}\d")
TIME = re.compile(r"\b\d{1,2}:\d{2}\b")
MONEY = re.compile(r"[$€£]\s?\d[\d,]*(?:\.\d+)?")
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
WORD = re.compile(r"[A-Za-z][A-Za-z0-9+-]*")
SENTENCE_END = re.compile(r"[.!?:]\s*$|^\s*$|\n\s*$")


@dataclass(frozen=True)
class Value:
    kind: str  # email | url | phone | time | number | name
    text: str  # as written in the answer
    key: str  # normalised form used for the lookup


def _number_key(text: str) -> str:
    digits = text.replace(",", "")
    if "." in digits:
        digits = digits.rstrip("0").rstrip(".")
    return digits


def _strip_url(text: str) -> str:
    return text.rstrip(".,;:!?")


def extract_values(text: str, names: set[str] = frozenset()) -> list[Value]:
    """Values worth checking, in order of appearance. `[n]` citation marks are not values."""
    text = CITATION.sub(" ", text)
    found: list[tuple[int, Value]] = []

    def take(pattern, kind, key):
        nonlocal text
        for m in pattern.finditer(text):
            raw = m.group(0)
            if kind == "url":
                raw = _strip_url(raw)
            if kind == "phone" and len(re.sub(r"\D", "", raw)) < 7:
                continue
            found.append((m.start(), Value(kind, raw.strip(), key(raw))))
            text = text[: m.start()] + " " * len(m.group(0)) + text[m.end():]

    take(EMAIL, "email", str.lower)
    take(URL, "url", lambda s: _strip_url(s).lower().removeprefix("https://").removeprefix("http://"))
    take(PHONE, "phone", lambda s: re.sub(r"\D", "", s))
    take(TIME, "time", lambda s: s.lstrip("0") or "0")
    take(MONEY, "number", lambda s: _number_key(s.lstrip("$€£ ")))
    take(NUMBER, "number", _number_key)
    for m in WORD.finditer(text):
        word = m.group(0)
        if word in names and not SENTENCE_END.search(text[: m.start()]):
            found.append((m.start(), Value("name", word, word)))
    return [v for _, v in sorted(found, key=lambda t: t[0])]


def value_keys(text: str, names: set[str] = frozenset()) -> set[tuple[str, str]]:
    """What a passage offers: the keys of its values, and each of its words for name lookups."""
    keys = {(v.kind, v.key) for v in extract_values(text, names)}
    # a number inside a phone, time or price range still counts as that number
    keys |= {("number", _number_key(n)) for n in NUMBER.findall(CITATION.sub(" ", text))}
    keys |= {("name", w) for w in WORD.findall(text)}
    return keys


def unsupported(answer: str, evidence: list[str], names: set[str] = frozenset()) -> list[str]:
    """Values of `answer` found in none of the `evidence` texts (as written, each once)."""
    have: set[tuple[str, str]] = set()
    for text in evidence:
        have |= value_keys(text, names)
    out: list[str] = []
    for v in extract_values(answer, names):
        ok = (v.kind, v.key) in have or (v.kind == "time" and ("number", v.key.split(":")[0]) in have
                                         and ("number", v.key.split(":")[1]) in have)
        if not ok and v.text not in out:
            out.append(v.text)
    return out


_PAIR_WORD = re.compile(r"[\w$€£%°@+.,()-]+")


def _words(text: str) -> list[str]:
    return [w.strip(".,()").lower() for w in _PAIR_WORD.findall(CITATION.sub(" ", text)) if w.strip(".,()")]


def copied_share(answer: str, passages: list[str], frames: tuple[str, ...] = ()) -> float:
    """The share of the answer's word pairs that occur in the passages, fixed voice phrases
    (`frames`) removed first: 1.0 for a verbatim copy; a one-word answer is looked up alone.

    For a model trained to copy, a reply that is not made of the passages' words is broken ("we
    deleted wire to help!"), whatever values it happens to hold (chain.min_copied).
    """
    words = _words(without_frames(answer, frames))
    pairs = list(zip(words, words[1:])) or [(w,) for w in words]  # one word: look it up alone
    if not pairs:
        return 0.0
    have: set[tuple[str, ...]] = set()
    for text in passages:
        w = _words(text)
        have |= set(zip(w, w[1:])) | {(x,) for x in w}
    return sum(p in have for p in pairs) / len(pairs)


def without_frames(text: str, frames: tuple[str, ...]) -> str:
    """`text` with each of the fixed phrases `frames` (a voice's opener and closer) blanked out."""
    for frame in filter(None, frames):
        text = text.replace(frame, " ")
    return text


def cited_numbers(answer: str, count: int) -> list[int]:
    """The passage numbers an answer cites, in order of first use, ignoring ones that do not exist."""
    seen: list[int] = []
    for m in CITATION.finditer(answer):
        n = int(m.group(1))
        if 1 <= n <= count and n not in seen:
            seen.append(n)
    return seen


def proper_names(texts: list[str]) -> set[str]:
    """Capitalised words the help center uses as names (plan and product names, places, brands).

    A word counts when it is mostly written capitalised in mid-sentence, so "Plus" (a plan) is a
    name and "Free" at the start of a sentence is not, unless the pages capitalise it mid-sentence.
    """
    upper, lower = Counter(), Counter()
    for text in texts:
        for m in WORD.finditer(text):
            word = m.group(0)
            if word[0].isupper():
                if len(word) > 2 and not SENTENCE_END.search(text[max(0, m.start() - 3): m.start()]) and \
                        m.start() > 0 and text[m.start() - 1] not in "\n#*>-|":
                    upper[word] += 1
            else:
                lower[word.capitalize()] += 1
    return {w for w, n in upper.items() if n >= 2 and n > lower[w]}


def sentences(text: str, min_chars: int = 3) -> list[str]:
    """The sentences and lines of `text`, stripped, those shorter than `min_chars` dropped."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if len(s.strip()) >= min_chars]


def best_sentences(passage: str, question: str, limit: int = 2, kind: str = "", heading: str = "") -> str:
    """The `limit` sentences of `passage` that share most words with `question`, in passage order.

    A sentence that carries a value (a number, an e-mail) weighs half a shared word more: support
    questions mostly ask for one ("How much is Plus?" is answered by "- $4.99 per month"). Given
    the `kind` of value asked for (`asked_value`), a sentence holding one weighs a whole word more.
    The passage's `heading` ("Pricing > Premium") counts as words of each of its sentences.
    """
    found = sentences(passage)
    if not found:
        return passage.strip()
    q, head = _content_terms(question, kind), frozenset(tokenize(heading))
    weights = [_fit(s, q, kind, head) for s in found]
    # on a tie, the sentence holding the kind asked: "Up to 5 API keys per account." over "Premium
    # subscribers can create personal API keys" for "How many API keys can I create?"
    ranked = sorted(range(len(found)), key=lambda i: (-weights[i], bool(kind) and not carries(found[i], kind), i))
    keep = sorted(ranked[:limit])
    return " ".join(found[i] for i in keep)


def term_weights(texts: list[str]) -> dict[str, float]:
    """What each word tells apart among these `texts`: 1 for a word only one of them has, down to
    log(2) / log(1 + n) for one all n have ("thermostat" on a thermostat maker's pages)."""
    df = Counter(t for text in texts for t in set(tokenize(text)))
    n = len(texts)
    return {t: math.log(1 + n / d) / math.log(1 + n) for t, d in df.items()}


def fit(text: str, question: str, kind: str = "", heading: str = "", weights: dict[str, float] | None = None) -> float:
    """How closely `text` answers `question`: the question's words it (or its `heading`) shares,
    each counted at its `term_weights` (default 1), plus one for holding the `kind` of value asked
    for (half for any value, without a kind)."""
    return _fit(text, _content_terms(question, kind), kind, frozenset(tokenize(heading)), weights)


def best_fit(passage: str, question: str, kind: str = "", heading: str = "",
             weights: dict[str, float] | None = None) -> float:
    """The `fit` of the passage's closest sentence (0 for an empty passage)."""
    q, head = _content_terms(question, kind), frozenset(tokenize(heading))
    return max((_fit(s, q, kind, head, weights) for s in sentences(passage)), default=0.0)


def _fit(sentence: str, q: set[str], kind: str, heading: frozenset[str], weights: dict[str, float] | None = None) -> float:
    bonus = float(carries(sentence, kind)) if kind else 0.5 * bool(NUMBER.search(sentence) or EMAIL.search(sentence))
    shared = q & (set(tokenize(sentence)) | heading)
    return (sum(weights.get(t, 1.0) for t in shared) if weights else len(shared)) + bonus


# What kind of value a question asks for, and what a text carrying one looks like. The classic
# answer-type match of question answering: "How much is one room sensor?" wants a price, so a
# passage about the sensor's battery is not the one to answer from, however close its words.
_ASKS = [
    ("email", re.compile(r"\be-?mail\b", re.I), EMAIL),
    ("phone", re.compile(r"\b(?:phone|call|telephone)\b", re.I), PHONE),
    # "how much is/does..." asks a price; "how much run time..." asks a quantity
    ("price", re.compile(r"\bhow much (?:is|are|was|were|does|do|did|will|would|should|can|could)\b"
                         r"|\bcosts?\b|\bprices?\b|\bfees?\b", re.I), MONEY),
    # "how fast do refunds arrive" asks a time ("within 5 business days"), not a speed
    ("duration", re.compile(r"\bhow (?:long|old|fast|soon|quickly)\b"
                            r"|\bhow many (?:days|weeks|months|years|hours|minutes)\b", re.I),
     re.compile(r"\b\d[\d,.]*\s*(?:-|to)?\s*(?:business\s+|calendar\s+)?"
                r"(?:days?|weeks?|months?|years?|hours?|minutes?)\b", re.I)),
    ("count", re.compile(r"\bhow many\b", re.I), re.compile(r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?!\w)")),  # not "2FA"
    # the company's address ("your postal address"), not "my billing address", which asks how to change it
    ("address", re.compile(r"\b(?:postal|mailing|street|office|your)\s+address\b|\baddress of\b", re.I),
     re.compile(r"\b\d{1,6}\s+(?:[A-Z][\w'-]*\s+){1,4}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|"
                r"Drive|Dr|Way|Place|Pl|Court|Ct|Square|Sq|Parkway|Pkwy|Highway|Hwy)\b|\bP\.?\s?O\.?\s+Box\s+\d+")),
]


_COUNTED = re.compile(r"\bhow many\s+((?:[a-z][\w-]*\s*){1,3})", re.I)


def asked_value(question: str) -> str:
    """The kind of value `question` asks for (email, phone, price, duration, count, address), or "".

    A count names what it counts where the question does: "How many backup codes..." gives
    "count backup code", answered by "10 backup codes" and not by "3 business days".
    """
    kind = next((kind for kind, asks, _ in _ASKS if asks.search(question)), "")
    counted = _COUNTED.search(question) if kind == "count" else None
    noun = []
    for word in (counted.group(1).split() if counted else []):  # the noun phrase ends at "can", "do"...
        if not tokenize(word):
            break
        noun += tokenize(word)
    return " ".join(["count", *noun]) if noun else kind


def carries(text: str, kind: str) -> bool:
    """Whether `text` holds a value of that kind (always True for kind ""); citations do not count."""
    if not kind:
        return True
    name, *noun = kind.split()
    text = CITATION.sub("", text)
    found = next(pattern for k, _, pattern in _ASKS if k == name).finditer(text)
    # a counted noun must follow its number within three words: "up to 10 backup codes"
    return any(not noun or set(noun) & set(tokenize(" ".join(text[m.end():].split()[:3]))) for m in found)


def _content_terms(question: str, kind: str) -> set[str]:
    """The question's words less those that ask for the kind of value ("how long", "cost"): the
    kind bonus already counts them, and "long" should not pull in a section "How long we keep data"."""
    name = kind.split(" ", 1)[0]
    asks = next((a for k, a, _ in _ASKS if k == name), None)
    return set(tokenize(asks.sub(" ", question) if asks else question))
