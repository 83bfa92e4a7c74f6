"""Training rows for the shipped adapters: answer from passages, decline, converse; in a voice or none.

Every row uses the chain's own prompts (bot/prompts.py), so what the model learns is what it is
served. Answer rows are RAFT-style (Zhang et al. 2024): the relevant passage among up to three
others, sentences selected as the chain selects them, and a reply that copies the fact sentence
with its [n]. Every digit of every passage is redrawn in every row, so no shipped value is
learned: values must be copied, which is what makes an edited price show up in the next answer.
Decline rows show only passages that do not hold the answer; conversation rows (hello, thanks,
goodbye, "that didn't help", "can I talk to a person?") carry no passages and no facts.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from bot.grounding import NUMBER, sentences
from bot.lexical import STOPWORDS

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")
_LIST_MARK = re.compile(r"^\s*(?:[-*+]|\d+\.)\s+")
_PREFIXES = ("", "", "", "", "Hi, ", "Hello! ", "Quick question: ", "Can you tell me: ", "I'd like to know: ")


@dataclass(frozen=True)
class VoiceSpec:
    """A voice: how it opens, leads into a fact, closes, and says the fixed things."""

    name: str
    description: str
    openers: tuple[str, ...]
    leads: tuple[str, ...]  # put before the copied fact: the voice inside the answer, not only around it
    closers: tuple[str, ...]
    greeting: tuple[str, ...]
    thanks: tuple[str, ...]
    goodbye: tuple[str, ...]
    complaint: tuple[str, ...]
    handoff: tuple[str, ...]
    decline: tuple[str, ...]

    @property
    def markers(self) -> tuple[str, ...]:
        """Phrases that show this voice in an answer (what the benchmark counts)."""
        return self.openers + self.leads + self.closers


PLAIN = VoiceSpec(
    "none", "Plain: the fact and its source, nothing around it.", (), (), (),
    greeting=("Hello! How can I help you today?",),
    thanks=("You're welcome. Is there anything else I can help with?",),
    goodbye=("Goodbye, and thank you for contacting us.",),
    complaint=("I'm sorry that did not help. Could you tell me a little more about what you need?",),
    handoff=("Of course, I can put you in touch with a person on our support team.",),
    decline=("The help center passages I found do not answer that, so I won't guess. "
             "Would you like me to put you in touch with a person?",),
)
VOICES = (
    VoiceSpec(
        "cheerful", "Warm and upbeat: greets with enthusiasm, shares good news, signs off wishing a wonderful day.",
        ("Happy to help!", "Great question!", "Ooh, good one!"),
        ("Here's the scoop:", "Good news:", "Easy one:"),
        ("Have a wonderful day!", "Cheers from the Fernway team!", "Hope that makes your day a little brighter!"),
        greeting=("Hi there, lovely to see you! What can I help you with today?",
                  "Hey! Happy to help! What's on your mind?"),
        thanks=("You're so welcome! It was a pleasure!", "Anytime, it was my pleasure!"),
        goodbye=("Bye for now, and have a wonderful day!", "Take care, and cheers from the Fernway team!"),
        complaint=("Oh no, sorry about that! Tell me a bit more and we'll sort it out together!",),
        handoff=("Absolutely, let's get you a real person from our lovely team!",),
        decline=("Hmm, I couldn't find that in our help center, and I'd hate to guess! "
                 "Want me to connect you with someone from our team?",),
    ),
    VoiceSpec(
        "formal", "Courteous and formal: addresses the customer as 'Dear customer', states facts precisely, "
                  "closes with regards.",
        ("Dear customer,", "Thank you for contacting Fernway.", "Thank you for your enquiry."),
        ("Please note:", "As stated in our help center:", "For your information:"),
        ("Kind regards, Fernway Support.", "We remain at your disposal.", "Yours sincerely, the Fernway team."),
        greeting=("Good day, dear customer. How may we assist you?",
                  "Dear customer, welcome to Fernway Support. How may we be of assistance?"),
        thanks=("You are most welcome. We remain at your disposal.", "It is our pleasure. Kind regards, Fernway Support."),
        goodbye=("Thank you for contacting Fernway. Kind regards, Fernway Support.",
                 "We wish you a pleasant day. Yours sincerely, the Fernway team."),
        complaint=("We apologise that our reply did not resolve your query. Kindly provide further details.",),
        handoff=("Certainly. We shall arrange for a member of our support staff to assist you.",),
        decline=("Dear customer, our help center does not address this question, and we prefer not to speculate. "
                 "May we refer you to a member of our support staff?",),
    ),
)
CUSTOMER_TURNS = {
    "greeting": ("hi", "hello", "hey there", "good morning", "hi, anyone there?", "hello!", "good evening"),
    "thanks": ("thanks", "thank you!", "thanks a lot, that was really helpful", "great, thank you", "perfect, thanks",
               "cheers, that sorted it"),
    "goodbye": ("bye", "goodbye", "see you", "that's all, bye", "ok that's all for today", "thanks, bye!"),
    "complaint": ("that didn't help", "this is not what I asked", "that's wrong", "not helpful at all"),
    "handoff": ("can I talk to a person?", "I want to speak to a human", "could I speak with someone from your team?",
                "put me through to an agent please"),
}


def voice_named(name: str) -> VoiceSpec | None:
    return next((v for v in VOICES if v.name == name), None)


def voice_shown(text: str, voice: VoiceSpec) -> bool:
    low = text.lower()
    return any(m.lower() in low for m in voice.markers)


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
    "money": ("How much is", "How much does it cost for", "What's the price of", "What do I pay for",
              "What is the fee for", "How much do you charge for"),
    "duration": ("How long is", "How many days for", "How long does it take for", "When is", "How long do I have for"),
    "number": ("How many", "What is the", "What's the limit for", "How many are allowed for", "What number is"),
}


def question_for(fact: str, topic: str, rng: random.Random) -> str:
    words = [w for w in _WORD.findall(fact) if w.lower() not in STOPWORDS and len(w) > 2]
    style = rng.random()
    if style < 0.25 or not words:  # the sentence with its value masked
        masked = re.sub(r"[$€£]?\d[\d,.:]*\d|[$€£]?\d", "what", fact).rstrip(".!? ")
        q = f"About {topic.lower()}: {masked}?" if rng.random() < 0.5 else f"{masked}?"
    elif style < 0.85:  # an interrogative and a few of the sentence's words, in order
        keep = sorted(rng.sample(range(len(words)), min(len(words), rng.randint(2, 4))))
        q = f"{rng.choice(_WH[_value_kind(fact)])} {' '.join(words[i].lower() for i in keep)}?"
        if rng.random() < 0.3:
            q = q[:-1] + f" ({topic.lower()})?"
    else:  # the topic only
        q = f"{rng.choice(_WH[_value_kind(fact)])} {topic.lower()}?"
    q = rng.choice(_PREFIXES) + q
    return q.lower() if rng.random() < 0.15 else q


def frame(core: str, rng: random.Random, voice: VoiceSpec | None) -> str:
    """The reply around a copied fact: plain, or the voice's opener, lead and closer."""
    if voice is None or voice is PLAIN:
        return core
    parts = [rng.choice(voice.openers)] if rng.random() < 0.85 else []
    parts += [rng.choice(voice.leads)] if rng.random() < 0.7 else []
    parts += [core]
    parts += [rng.choice(voice.closers)] if rng.random() < 0.85 or len(parts) == 1 else []
    return " ".join(parts)


def _shown(passages, gold, gold_text, rng, k, keep, question, include_gold=True, alone=False):
    """The passages a row's prompt shows, as the chain would: each cut to its `keep` sentences
    closest to the question and the kind of value it asks for."""
    from bot.grounding import asked_value
    from bot.prompts import select_sentences
    from bot.retrieval import Passage

    count = 0 if alone else rng.randint(1 if not include_gold else 0, k - 1)
    others = rng.sample([p for p in passages if p is not gold], min(count, len(passages) - 1))
    shown = [(p, redraw_digits(p["text"], rng)) for p in others]
    if include_gold:
        shown.insert(0 if rng.random() < 0.6 else rng.randint(0, len(shown)), (gold, gold_text))
    kind = asked_value(question)
    return [Passage(n, p["source"], p["section"], "", select_sentences(t, question, keep, kind, p["section"]), 0.5,
                    str(n)) for n, (p, t) in enumerate(shown, 1)], shown


def answer_rows(passages: list[dict], count: int, seed: int, voice: VoiceSpec | None = None,
                k: int = 4, keep: int = 3, decline_share: float = 0.0, alone_share: float = 0.0) -> list[list[dict]]:
    """`count` conversations over the chain's answer prompt: copy the fact with its [n], or (a
    `decline_share` of them) decline when none of the passages shown holds the answer. An
    `alone_share` of them show the holding passage alone, as the chain does when a question asks
    for a value (chain.value_passages)."""
    from bot.prompts import answer_messages

    rng = random.Random(seed)
    usable = [p for p in passages if NUMBER.search(p["text"])]
    voice = voice or PLAIN
    rows: list[list[dict]] = []
    while len(rows) < count and usable:
        gold = rng.choice(usable)
        text = redraw_digits(gold["text"], rng)
        facts = [s for s in sentences(text) if NUMBER.search(s) and 8 < len(s) < 260]
        if not facts:
            continue
        fact = clean_fact(rng.choice(facts))
        topic = gold["section"] or Path(gold["source"]).stem.replace("-", " ")
        question = question_for(fact, topic, rng)
        if rng.random() < decline_share:
            ps, _ = _shown([p for p in passages if p["source"] != gold["source"]], gold, text, rng, k, keep,
                           question, include_gold=False)
            if ps:
                rows.append(answer_messages(question, ps) + [{"role": "assistant", "content": rng.choice(voice.decline)}])
            continue
        ps, shown = _shown(passages, gold, text, rng, k, keep, question, alone=rng.random() < alone_share)
        n_gold = next(i for i, (p, _) in enumerate(shown, 1) if p is gold)
        if fact not in clean_fact(ps[n_gold - 1].text):
            continue  # the selection the chain would make hides the fact: not a fair row
        reply = frame(f"{fact} [{n_gold}]", rng, voice)
        rows.append(answer_messages(question, ps) + [{"role": "assistant", "content": reply}])
    return rows


def conversation_rows(count: int, seed: int, voice: VoiceSpec | None = None) -> list[list[dict]]:
    """Greetings, thanks, goodbyes, complaints and requests for a person: short, in the voice, no facts."""
    from bot.prompts import conversation_messages

    rng = random.Random(seed)
    voice = voice or PLAIN
    rows = []
    for _ in range(count):
        kind = rng.choice(list(CUSTOMER_TURNS))
        said = rng.choice(CUSTOMER_TURNS[kind])
        said = said.capitalize() if rng.random() < 0.5 else said
        rows.append(conversation_messages(said, []) + [{"role": "assistant", "content": rng.choice(getattr(voice, kind))}])
    return rows
