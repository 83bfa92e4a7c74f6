"""What kind of turn a message is, by its nearest labelled turns over the bundled MiniLM.

Users thank, leave and ask for a person in more ways than a keyword list covers ("cheers, that
sorted it", "ok that's all for today", "could I speak with someone from your team?"); MiniLM
already puts such phrasings next to labelled ones. `bot/turns.jsonl` holds the labelled turns,
about half of them inquiries, many wrapped in pleasantries. A message is decided in this order
(each step measured with bench/turns.py, leave-one-out on the shipped set):

1. the rules of bot/dialogue.py where they are precise: the whole message is a pleasantry
   ("ok thanks a lot!"), or it asks to talk to a person and asks nothing else ("I want to
   speak to a human about my refund": the vote would follow the topic to an inquiry);
2. the `k` nearest labelled turns vote, each with its cosine;
3. nothing labelled is near (the winning kind's best cosine under `floor`): an inquiry, so
   that retrieval's threshold decides and an off-topic question is refused, not chatted with;
4. a pleasantry that carries a question is an inquiry ("thanks! and do you ship to Canada?"):
   a clause of it opens like a request for information (what, how, is there...) while the
   message does not ask for a person, or a clause that is a question or four words long is
   an inquiry on its own.

How the set is labelled (keep new turns consistent): asking for contact details, hours or who
handles something is an inquiry ("who do I talk to about a refund?"); asking to be put through
to a person now is a handoff ("could I speak with someone from your team?"). A farewell is a
goodbye even with thanks in it ("thanks, bye!"). "That didn't help" with a new question in it
is an inquiry: the question can be answered. Off-topic questions are inquiries (refused later).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot import dialogue

KINDS = (dialogue.INQUIRY, dialogue.GREETING, dialogue.THANKS, dialogue.GOODBYE, dialogue.COMPLAINT,
         dialogue.HANDOFF)
SHIPPED = Path(__file__).with_name("turns.jsonl")
# A clause ends at punctuation: "thanks for that. one more thing, how do I change my card?"
_CLAUSE = re.compile(r"(?<=[.!?;:,])\s+")
# How a request for information opens; "can you..." is left out: it opens hand-offs as often.
_INFO_OPENER = re.compile(
    r"^(and |so |also |ok |okay )?(what|whats|what's|when|where|which|why|how|who|whom|whose|"
    r"is there|are there|do you have|does|do i|is my|is it)\b", re.I)


@dataclass(frozen=True)
class Turn:
    text: str
    kind: str


def load_turns(path: Path = SHIPPED) -> list[Turn]:
    """Labelled turns, one {"text", "kind"} object a line; a bad line is an error that names it."""
    turns = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            turn = Turn(str(row["text"]).strip(), str(row["kind"]))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{number}: not a {{\"text\", \"kind\"}} object ({err})") from None
        if turn.kind not in KINDS or not turn.text:
            raise ValueError(f"{path}:{number}: kind must be one of {', '.join(KINDS)} and text non-empty")
        turns.append(turn)
    return turns


class TurnClassifier:
    """`classify(message)` -> one of KINDS, by the nearest labelled turns (cosine over `embeddings`).

    The labelled turns are embedded once, on first use, and kept in memory (about 0.3 MB); a
    message then costs one embedding, or one per clause when a pleasantry may carry a question.
    Safe to share between threads."""

    def __init__(self, embeddings, examples: list[Turn] | None = None, k: int = 7, floor: float = 0.3):
        self.embeddings = embeddings
        self.examples = list(examples) if examples is not None else load_turns()
        if not self.examples:
            raise ValueError("the turn classifier needs labelled turns")
        self.k, self.floor = k, floor
        self._labels = [t.kind for t in self.examples]
        self._matrix: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def vectors(self) -> np.ndarray:
        """The labelled turns' unit vectors, one row each (embedded on first use)."""
        with self._lock:
            if self._matrix is None:
                self._matrix = _unit(self.embeddings.embed_documents([t.text for t in self.examples]))
        return self._matrix

    def without(self, index: int) -> TurnClassifier:
        """The same classifier less one labelled turn, sharing the vectors: leave-one-out measurement."""
        other = TurnClassifier(self.embeddings, self.examples[:index] + self.examples[index + 1:], self.k, self.floor)
        other._matrix = np.delete(self.vectors, index, axis=0)
        return other

    def classify(self, message: str) -> str:
        return self.decide(message, _unit([self.embeddings.embed_query(message)])[0])

    def classify_many(self, messages: list[str]) -> list[str]:
        """One embedding call for all the messages (benchmarks, tests)."""
        vectors = _unit(self.embeddings.embed_documents(list(messages)))
        return [self.decide(m, v) for m, v in zip(messages, vectors)]

    def decide(self, message: str, vector: np.ndarray) -> str:
        """The kind of `message`, whose unit vector is `vector`."""
        rule = dialogue.pleasantry(message)
        if rule is not None:
            return rule
        if dialogue.asks_for_person(message) and not _asks_for_information(message):
            return dialogue.HANDOFF  # "I want to speak to a human about my refund": the topic is no question
        kind, best = self.vote(vector)
        if kind == dialogue.INQUIRY or best < self.floor or self._carries_question(message):
            return dialogue.INQUIRY
        return kind

    def vote(self, vector: np.ndarray) -> tuple[str, float]:
        """The kind the k nearest labelled turns give most cosine to, and its nearest turn's cosine."""
        sims = self.vectors @ vector
        nearest = np.argsort(-sims)[:self.k]
        weight: dict[str, float] = {}
        for i in nearest:
            weight[self._labels[i]] = weight.get(self._labels[i], 0.0) + max(float(sims[i]), 0.0)
        kind = max(weight, key=weight.get)
        return kind, float(max(sims[i] for i in nearest if self._labels[i] == kind))

    def _carries_question(self, message: str) -> bool:
        """A pleasantry or complaint that also asks something retrieval can answer."""
        if _asks_for_information(message) and not dialogue.asks_for_person(message):
            return True
        parts = _clauses(message)
        if len(parts) < 2:
            return False  # one clause: the vote on the whole message has already spoken
        # three words are a question only with a question mark: without, a command or a pleasantry
        # ("real support please", "that sorted it"); four describe a problem ("the screen is blank")
        clauses = [c for c in parts if len(c.split()) >= (3 if c.endswith("?") else 4)]
        # one embedding call each, not embed_documents: that one feeds a running sync's progress bar
        votes = [self.vote(_unit([self.embeddings.embed_query(c)])[0]) for c in clauses]
        # a clause that no labelled turn is near is no evidence of a question
        return any(kind == dialogue.INQUIRY and best >= self.floor for kind, best in votes)


def _clauses(message: str) -> list[str]:
    return [c.strip() for c in _CLAUSE.split(message.strip()) if c.strip()]


def _asks_for_information(message: str) -> bool:
    """A clause of three words or more opens like a request for information: "hi, how much is Plus?"."""
    return any(_INFO_OPENER.match(c) and len(c.split()) >= 3 for c in _clauses(message))


def _unit(vectors) -> np.ndarray:
    """Rows scaled to length 1, so that a dot product is the cosine (MiniLM's already are)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
