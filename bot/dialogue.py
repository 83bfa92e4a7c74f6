"""What kind of turn a message is, and the standalone question behind a follow-up.

The split the hybrid rests on: conversational turns (hello, thanks, goodbye, "that didn't help",
"can I talk to a person?") go to the voice alone; inquiries go through retrieval. The rules here
are predictable, instant and testable, but miss phrasings they were not written for ("cheers,
that sorted it"): the chain's classifier is `bot.turns.TurnClassifier`, nearest labelled turns
over MiniLM, which uses the precise ones of these rules first. Follow-ups are resolved by rules,
not a model: a small model cannot be trusted to rewrite a question without changing it.
"""

from __future__ import annotations

import re
import unicodedata

from bot.errors import RequestError

INQUIRY, GREETING, THANKS, GOODBYE, COMPLAINT, HANDOFF = (
    "inquiry", "greeting", "thanks", "goodbye", "complaint", "handoff")

_HANDOFF = re.compile(
    r"\b(talk|speak|chat|connect|transfer|put)\b.{0,30}\b(person|human|someone|somebody|agent|representative|rep|"
    r"operator|staff|team member|real people|manager|supervisor)\b|\b(real|live|human) (person|agent|being|support)\b|"
    r"\bhand(ed)? ?(me )?over\b|\bhuman support\b|\bcall me back\b",
    re.I,
)
_PATTERNS = [
    (THANKS, r"(thanks?( you)?|thank u|thx|ty|cheers|much appreciated|appreciate it|great,? thanks?)( (so|very) much| a lot)?"),
    (GOODBYE, r"(bye|goodbye|good bye|see you|see ya|have a (nice|good|great) (day|one)|that'?s all|that is all|bye bye)"),
    (GREETING, r"(hi|hello|hey|hey there|hi there|hello there|good (morning|afternoon|evening)|greetings|howdy|yo)"),
    (COMPLAINT, r"(that|this|it|you)( (did ?n[o']?t|does ?n[o']?t|was ?n[o']?t|is ?n[o']?t|is not|did not|does not))? "
                r"(help|work|answer my question|helpful|right|correct|useful)|not helpful|useless|wrong answer|"
                r"that'?s (wrong|not right|not it|incorrect)|no,? that'?s not (it|what i asked)"),
]
_FILLER = r"(ok(ay)?|great|perfect|awesome|cool|alright|well|oh|ah|so|and|again|anyway|folks|team|all|everyone|there)"
# A follow-up starts with a connective or leans on a pronoun; "How much is the Plus plan?" stands alone.
_FOLLOW_UP = re.compile(
    r"^(and|also|but|so|what about|how about|what if|same for|same question)\b|\b(that|this|it|they|them|those|these|its)\b",
    re.I,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """NFC text without control and bidi-override characters."""
    return _CONTROL.sub("", unicodedata.normalize("NFC", text)).strip()


def clean_message(message: str, limit: int) -> str:
    """Visible text only (control and bidi-override characters removed), within `limit` characters."""
    if not isinstance(message, str):
        raise RequestError("the message must be text")
    text = visible(message)
    if not text:
        raise RequestError("the message is empty", "type a question")
    if len(text) > limit:
        raise RequestError(
            f"the message is {len(text):,} characters long; the limit is {limit:,}",
            "shorten it to the question itself (or raise chain.max_message_chars)",
        )
    return text


def classify(message: str) -> str:
    """One of INQUIRY, GREETING, THANKS, GOODBYE, COMPLAINT, HANDOFF, by rules alone.

    The chain uses `bot.turns.TurnClassifier`, which generalises past these patterns; this stays
    as the fallback without embeddings and as the baseline bench/turns.py measures against."""
    if asks_for_person(message):
        return HANDOFF
    return pleasantry(message) or INQUIRY


def asks_for_person(message: str) -> bool:
    """The hand-off pattern anywhere in the message: "I want to speak to a human about my refund"."""
    return bool(_HANDOFF.search(message))


def pleasantry(message: str) -> str | None:
    """GREETING, THANKS, GOODBYE or COMPLAINT when the whole message is one, else None."""
    text = re.sub(r"[^\w' ]+", " ", message.lower())
    text = " ".join(text.split())
    for kind, pattern in _PATTERNS:
        # the whole message is the pleasantry, give or take filler words: "ok thanks a lot!"
        if re.fullmatch(rf"(({_FILLER}) )*({pattern})( ({_FILLER}|{pattern}))*", text):
            return kind
    return None


def standalone_question(message: str, history: list[dict], max_turns: int = 6) -> str:
    """Resolve a short follow-up against the last inquiry: "and how long does that take?" after
    "How do I return my thermostat?" becomes one question that retrieval can answer."""
    words = message.split()
    if len(words) > 12 or not _FOLLOW_UP.search(message):
        return message
    earlier = [m["content"] for m in history[-2 * max_turns:] if m.get("role") == "user"]
    for previous in reversed(earlier):
        previous = content_text(previous)
        if classify(previous) != INQUIRY:
            continue
        return f"{previous.rstrip()} {message}" if previous.rstrip().endswith(("?", ".", "!")) \
            else f"{previous.rstrip()}. {message}"
    return message


def content_text(content) -> str:
    """History content is a string over the API, or a list of {"type": "text", "text"} parts in Gradio."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return str(content)
