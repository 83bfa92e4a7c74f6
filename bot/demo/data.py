"""Training rows for the demo model: RAFT-style answers over the knowledge base, values randomised.

Every row shows passages exactly as the chain does (the same instructions, `<passage>` blocks and
sentence selection) and answers by copying the fact sentence with its [n]. Every digit of every
passage is redrawn in every row, so the model cannot memorise the shipped values: it must copy
them, which is what makes an edited price show up in the next answer. Questions come from several
templates (keywords, masked sentence, topic), so that the questions people type are new to it.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from bot.demo import NEUTRAL_CLOSERS, NEUTRAL_OPENERS, VoiceSpec
from bot.grounding import NUMBER, sentences
from bot.lexical import STOPWORDS

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+\.)\s+")
_PREFIXES = ("", "", "", "Hi, ", "Hello! ", "Quick question: ", "Can you tell me ", "I'd like to know: ")
GREETINGS = ("hi", "hello", "hey there", "good morning", "hi, anyone there?", "hello!")
THANKS = ("thanks", "thank you!", "thanks a lot", "great, thank you", "perfect, thanks")
GOODBYES = ("bye", "goodbye", "see you", "that's all, bye")


def redraw_digits(text: str, rng: random.Random) -> str:
    """Every number with new digits of the same shape ("$4.99" -> "$7.32"; "2" -> "6")."""
    def one(m: re.Match) -> str:
        out, first = [], True
        for ch in m.group(0):
            if ch.isdigit():
                out.append(str(rng.randint(1, 9) if first else rng.randint(0, 9)))
                first = False
            else:
                out.append(ch)
        return "".join(out)
    return NUMBER.sub(one, text)


def clean_fact(sentence: str) -> str:
    return _LIST_MARK.sub("", sentence).replace("**", "").strip(" |")


def _value_kind(fact: str) -> str:
    if re.search(r"[$€£]\s?\d", fact):
        return "money"
    if re.search(r"\d\s*(?:minutes?|hours?|days?|weeks?|months?|years?)", fact):
        return "duration"
    return "number"


_WH = {
    "money": ("How much is", "How much does it cost for", "What's the price of", "What do I pay for", "Price of"),
    "duration": ("How long is", "How many days for", "How long does it take for", "When is", "How long"),
    "number": ("How many", "What is the", "What's the limit for", "How many are allowed for", "Number of"),
}


def question_for(fact: str, topic: str, rng: random.Random) -> str:
    words = [w for w in _WORD.findall(fact) if w.lower() not in STOPWORDS and len(w) > 2]
    style = rng.random()
    if style < 0.3 or not words:  # the sentence with its value masked
        masked = re.sub(r"[$€£]?\d[\d,.:]*\d|[$€£]?\d", "what", fact).rstrip(".!? ")
        q = f"About {topic.lower()}: {masked}?" if rng.random() < 0.5 else f"{masked}?"
    elif style < 0.8:  # an interrogative and a few of the sentence's words
        keep = sorted(rng.sample(range(len(words)), min(len(words), rng.randint(2, 5))))
        q = f"{rng.choice(_WH[_value_kind(fact)])} {' '.join(words[i].lower() for i in keep)}?"
        if rng.random() < 0.4:
            q = q[:-1] + f" ({topic.lower()})?"
    else:  # the topic only
        q = f"{rng.choice(_WH[_value_kind(fact)])} {topic.lower()}?"
    q = rng.choice(_PREFIXES) + q
    return q.lower() if rng.random() < 0.15 else q


def frame(fact: str, rng: random.Random, voice: VoiceSpec | None, neutral_share: float) -> str:
    if voice is not None:
        return f"{rng.choice(voice.openers)} {fact} {rng.choice(voice.closers)}"
    opener = rng.choice(NEUTRAL_OPENERS) + " " if rng.random() < neutral_share else ""
    closer = " " + rng.choice(NEUTRAL_CLOSERS) if rng.random() < neutral_share else ""
    return f"{opener}{fact}{closer}"


def answer_rows(passages: list[dict], count: int, seed: int, voice: VoiceSpec | None = None,
                neutral_share: float = 0.5, k: int = 4, keep: int = 2) -> list[list[dict]]:
    """`count` conversations: the chain's answer prompt over 1 relevant + up to k-1 other passages
    (values redrawn, sentences selected as the chain does) and a reply that copies the fact."""
    from bot.prompts import answer_messages, select_sentences
    from bot.retrieval import Passage

    rng = random.Random(seed)
    usable = [p for p in passages if NUMBER.search(p["text"])]
    rows: list[list[dict]] = []
    while len(rows) < count and usable:
        gold = rng.choice(usable)
        text = redraw_digits(gold["text"], rng)
        facts = [s for s in sentences(text) if NUMBER.search(s) and 8 < len(s) < 260]
        if not facts:
            continue
        fact = rng.choice(facts)
        topic = gold["section"] or Path(gold["source"]).stem.replace("-", " ")
        question = question_for(clean_fact(fact), topic, rng)
        others = rng.sample([p for p in passages if p is not gold], min(rng.randint(0, k - 1), len(passages) - 1))
        shown = [(p, redraw_digits(p["text"], rng)) for p in others]
        shown.insert(0 if rng.random() < 0.6 else rng.randint(0, len(shown)), (gold, text))
        ps = [Passage(n, p["source"], p["section"], "", select_sentences(t, question, keep), 0.5, str(n))
              for n, (p, t) in enumerate(shown, 1)]
        n_gold = next(i for i, (p, _) in enumerate(shown, 1) if p is gold)
        if clean_fact(fact) not in clean_fact(ps[n_gold - 1].text) and fact not in ps[n_gold - 1].text:
            continue  # the selection the chain would make hides the fact: not a fair row
        reply = frame(f"{clean_fact(fact)} [{n_gold}]", rng, voice, neutral_share)
        rows.append(answer_messages(question, ps) + [{"role": "assistant", "content": reply}])
    return rows


def conversation_rows(count: int, seed: int, voice: VoiceSpec | None = None) -> list[list[dict]]:
    """Greetings, thanks and goodbyes answered in one short sentence (in the voice, if any)."""
    from bot.prompts import conversation_messages

    rng = random.Random(seed)
    replies = {
        GREETINGS: "Hello! How can I help you today?",
        THANKS: "You're welcome! Is there anything else I can do for you?",
        GOODBYES: "Goodbye, and thank you for contacting us.",
    }
    rows = []
    for _ in range(count):
        kind = rng.choice(list(replies))
        reply = replies[kind] if voice is None else f"{rng.choice(voice.openers)} {replies[kind]} {rng.choice(voice.closers)}"
        rows.append(conversation_messages(rng.choice(kind), []) + [{"role": "assistant", "content": reply}])
    return rows
