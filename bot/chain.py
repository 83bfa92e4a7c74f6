"""The hybrid chain: history + message -> standalone question -> passages -> prompt -> streamed answer.

One LCEL pipeline, `prepare | retrieve | respond`:
- prepare: clean the message, check the adapter, classify the turn, resolve a follow-up;
- retrieve: the LangChain retriever over the FAISS index (inquiries only);
- respond: a generator of events, `{"type": "token", "text"}` while the model writes and one
  final `{"type": "answer", "answer": Answer}`. Below the relevance threshold it refuses in the
  adapter's voice and offers a person; conversational turns go to the voice without retrieval;
  after generation the grounding check replaces an answer whose values the cited passages do
  not contain by a quote of the best passage.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator

from langchain_core.runnables import RunnableGenerator, RunnableLambda

from bot import dialogue, prompts
from bot.config import Settings
from bot.generation import GenerationStats, Generator
from bot.grounding import (CITATION, asked_value, best_fit, best_sentences, carries, cited_numbers, copied_share,
                           extract_values, fit, proper_names, term_weights, unsupported, without_frames)
from bot.release import SentenceGate
from bot.retrieval import KnowledgeRetriever, Passage
from bot.turns import TurnClassifier


@dataclass
class Answer:
    text: str
    adapter: str
    kind: str  # answer | fallback | refusal | conversation | handoff
    question: str  # the standalone question that was searched
    refused: bool = False
    flagged: list[str] = field(default_factory=list)  # values the cited passages do not contain
    sources: list[dict] = field(default_factory=list)  # n, source, section, score, text, cited
    generated: str = ""  # the model's own words, before any fallback
    stopped: bool = False
    timings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        return {"answer": data.pop("text"), **data}


def _source(p: Passage, cited: bool) -> dict:
    return {"n": p.n, "source": p.source, "section": p.section, "score": round(p.score, 4),
            "text": p.text, "cited": cited, "also_in": list(p.also_in)}


def _heading(p: Passage) -> str:
    return f"{p.title} {p.section}"


def recite(sentence: str, n: int) -> str:
    """`sentence` citing passage `n` alone, where its first citation was."""
    marks = iter(range(len(CITATION.findall(sentence))))
    return CITATION.sub(lambda m: f"[{n}]" if next(marks) == 0 else "", sentence).replace(" .", ".")


def _closest(passages: list[Passage], question: str, asked: str) -> tuple[Passage | None, dict, dict]:
    """Retrieval does not know what kind of value is asked for: among the passages holding that
    kind, the closest is the one whose sentence fits the question best (then the best score).
    Returns it (None where no passage holds one), each holder's fit, and the term weights."""
    holding = [p for p in passages if carries(p.text, asked)] if asked else []
    if not holding:
        return None, {}, {}
    weights = term_weights([f"{_heading(p)} {p.text}" for p in passages])
    fits = {p.n: best_fit(p.text, question, asked, _heading(p), weights) for p in holding}
    return max(holding, key=lambda p: (fits[p.n], p.score)), fits, weights


def _renumber(passages: list[Passage]) -> list[Passage]:
    return [replace(p, n=i) for i, p in enumerate(passages, 1)]


class SupportChain:
    def __init__(self, settings: Settings, kb, generator: Generator):
        self.settings = settings
        self.kb = kb
        self.generator = generator
        self.adapters = generator.adapters
        self.retriever = KnowledgeRetriever(kb=kb)
        self.turns = TurnClassifier(kb.embeddings)  # nearest labelled turns (bot/turns.jsonl), MiniLM
        self._names: tuple[str, set[str]] = ("", set())
        self.runnable = (
            RunnableLambda(self._prepare, name="prepare")
            | RunnableLambda(self._retrieve, name="retrieve")
            | RunnableGenerator(self._respond, name="respond")
        )

    # --- public ---------------------------------------------------------------------------
    def stream(self, message: str, history: list[dict] | None = None, adapter: str | None = None,
               stop: threading.Event | None = None) -> Iterator[dict]:
        yield from self.runnable.stream({"message": message, "history": history or [], "adapter": adapter,
                                         "stop": stop})

    def ask(self, message: str, history: list[dict] | None = None, adapter: str | None = None) -> Answer:
        for event in self.stream(message, history, adapter):
            if event["type"] == "answer":
                return event["answer"]
        raise RuntimeError("the chain ended without an answer")

    # --- steps ----------------------------------------------------------------------------
    def _prepare(self, state: dict) -> dict:
        cs = self.settings.chain
        message = dialogue.clean_message(state["message"], cs.max_message_chars)
        adapter = self.adapters.check(state.get("adapter"))
        turns = [m for m in state.get("history") or [] if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
        turns = turns[-2 * cs.history_turns:] if cs.history_turns else []
        # earlier turns come from the client too: cleaned and capped like the message, so a
        # forged 1 MB history costs no more than a long question
        history = [{"role": m["role"], "content": dialogue.visible(dialogue.content_text(m.get("content", "")))
                    [:cs.max_message_chars]} for m in turns]
        kind = self.turns.classify(message)
        question = dialogue.standalone_question(message, history, cs.history_turns) if kind == dialogue.INQUIRY else message
        return {**state, "message": message, "adapter": adapter, "history": history, "kind": kind,
                "question": question, "t0": time.perf_counter()}

    def _retrieve(self, state: dict) -> dict:
        if state["kind"] != dialogue.INQUIRY:
            return {**state, "passages": [], "relevant": False, "retrieve_s": 0.0}
        t = time.perf_counter()
        docs = self.retriever.invoke(state["question"])
        passages = [Passage(**{k: d.metadata[k] for k in ("n", "source", "section", "title", "score", "id")},
                            text=d.page_content, also_in=tuple(d.metadata.get("also_in", ()))) for d in docs]
        relevant = bool(docs) and bool(docs[0].metadata.get("relevant"))
        return {**state, "passages": passages, "relevant": relevant, "retrieve_s": time.perf_counter() - t}

    def _respond(self, inputs: Iterator[dict]) -> Iterator[dict]:
        for state in inputs:
            voice = prompts.Voice.from_card(self.adapters.card(state["adapter"]))
            kind = state["kind"]
            if kind == dialogue.INQUIRY and state["relevant"]:
                yield from self._answer(state, voice)
            elif kind == dialogue.INQUIRY:
                yield from self._refuse(state, voice)
            else:  # a person is offered on request, and when the last answer did not help
                yield from self._converse(state, voice, offer_person=kind in (dialogue.HANDOFF, dialogue.COMPLAINT))

    # --- responses ------------------------------------------------------------------------
    def _generate(self, state: dict, messages: list[dict], timings: dict, stats: GenerationStats,
                  copy_from: list[str] | None = None):
        first = None
        for piece in self.generator.stream(messages, state["adapter"], stop=state.get("stop"), stats=stats,
                                           copy_from=copy_from if self.settings.chain.copy_digits else None):
            if first is None:
                first = timings["first_token_s"] = round(time.perf_counter() - state["t0"], 4)
            yield piece

    @staticmethod
    def _release(stream, gate: SentenceGate, pieces: list[str], stats: GenerationStats, hold: bool = False):
        """Token events for what `gate` releases of the model's `stream` (none with `hold`), the
        model stopped as soon as the gate closes; the pieces are collected in `pieces`. Returns
        whether the reader stopped the answer (a Stop button), as opposed to the gate."""
        for piece in stream:
            pieces.append(piece)
            if hold:
                continue
            for released in gate.feed(piece):
                yield {"type": "token", "text": released}
            if gate.closed:  # a sentence failed the check, or the model repeats itself: stop it now
                break
        stream.close()
        stopped = stats.stopped and not gate.closed
        if not hold and not stopped:
            for released in gate.finish():
                yield {"type": "token", "text": released}
        return stopped

    def _answer(self, state: dict, voice: prompts.Voice) -> Iterator[dict]:
        loaded, ms, cs = self.generator.loaded, self.settings.model, self.settings.chain
        budget = loaded.context - min(ms.max_new_tokens, loaded.context // 2) - 8
        question, asked = state["question"], asked_value(state["question"])
        ranked = state["passages"]
        first = _closest(ranked, question, asked)[0] if cs.answer_first and asked else None
        if first is not None:
            # The passage most likely to hold the asked value goes first, alone or nearly: given four,
            # SmolLM2-135M copies a true sentence that does not answer as often as the one that does
            # (on the shipped questions: the gold value is in the first passage shown for 40 of 40
            # this way, 32 of 40 in retrieval order; own answers 0.425 with four, 0.675 with one)
            ranked = _renumber([first, *(p for p in ranked if p is not first)])
            ranked = ranked[:cs.value_passages] if cs.value_passages > 0 else ranked
        full = {p.n: p for p in ranked}
        shown = [replace(p, text=prompts.select_sentences(p.text, question, cs.passage_sentences,
                                                          asked if cs.answer_first else "", _heading(p)))
                 for p in ranked]
        shown = prompts.fit_passages(lambda m: len(loaded.encode(m)), state["question"], shown, budget)
        if not shown:  # a context window too small for even one passage: do not answer blind
            yield from self._refuse(state, voice)
            return
        messages = prompts.answer_messages(state["question"], shown)
        passages = [full[p.n] for p in shown]
        names = self._proper_names()
        evidence_of = {p.n: f"{_heading(p)} {p.text}" for p in passages}

        def grounded(sentence: str) -> bool | str:
            """Its values are in the passages it cites (or, citing none, in one shown). A sentence
            whose values all sit in one other passage cited the wrong one (SmolLM2 favours [1]):
            it is released citing that passage instead."""
            cited = cited_numbers(sentence, len(passages))
            # the voice's own phrases name the company ("Kind regards, Fernway Support."): not a claim
            claim = without_frames(sentence, voice.phrases)
            if not unsupported(claim, [evidence_of[n] for n in cited] or list(evidence_of.values()), names):
                return True
            holder = next((p.n for p in passages if not unsupported(claim, [evidence_of[p.n]], names)), None)
            return bool(cited) and holder is not None and recite(sentence, holder)

        # whole-answer checks need the whole answer before any of it is shown
        hold = bool(cs.min_copied) or bool(cs.require_asked_value) or bool(cs.require_closest)
        gate = SentenceGate(grounded) if cs.grounding == "fallback" else SentenceGate.passing()
        timings = {"retrieve_s": round(state["retrieve_s"], 4)}
        stats, pieces = GenerationStats(), []
        stopped = yield from self._release(self._generate(state, messages, timings, stats, [p.text for p in shown]),
                                           gate, pieces, stats, hold)
        generated = "".join(pieces).strip()
        cited = cited_numbers(generated, len(passages))
        evidence = [p for p in passages if p.n in cited] or passages
        flagged = unsupported(generated, [evidence_of[p.n] for p in evidence], names) if cs.grounding != "off" else []
        text, kind = (generated if hold else gate.text), "answer"
        closest, fits, weights = _closest(passages, question, asked)
        replace_it = not stopped and not text
        if hold and not stopped:
            replace_it = replace_it or self._fails_whole_checks(generated, passages, shown, question, asked, voice,
                                                                 closest, fits, weights)
            replace_it = replace_it or bool(flagged and cs.grounding == "fallback")
        if replace_it:
            # retrieval ranks better than a small model cites, and better than word overlap when
            # no kind of value is asked (on doc2dial, choosing by overlap cut token F1 0.332 -> 0.277)
            if closest is not None and cs.quote_asked_value:
                best = closest
                quote = best_sentences(best.text, question, kind=asked, heading=_heading(best))
            else:
                best = max(passages, key=lambda p: p.score)
                quote = best_sentences(best.text, question)
            text = voice.frame(prompts.fallback_text(quote, best.n))
            kind, cited = "fallback", [best.n]
            yield {"type": "token", "text": text}
        elif hold:
            yield {"type": "token", "text": text}
        elif not stopped and cs.complete_asked_value and closest is not None and not carries(text, asked):
            # shown sentence by sentence, the answer cannot be replaced once it lacks the value asked
            # for (SmolLM2 with a voice: "Good news:" looping on an e-mail question): the passage's
            # own sentence follows it, openly a quote
            quote = best_sentences(closest.text, question, kind=asked, heading=_heading(closest))
            extra = prompts.fallback_text(quote, closest.n)
            yield {"type": "token", "text": "\n\n" + extra}
            text, kind = f"{''.join(gate.released)}\n\n{extra}".strip(), "fallback"
            cited = cited_numbers(text, len(passages))
        else:
            cited = cited_numbers(text, len(passages))
        timings["total_s"] = round(time.perf_counter() - state["t0"], 4)
        timings["new_tokens"] = stats.new_tokens
        timings["generate_s"] = round(stats.seconds, 4)
        timings["decode_tokens_per_s"] = stats.decode_rate
        yield {"type": "answer", "answer": Answer(
            text=text, adapter=state["adapter"], kind=kind, question=state["question"], flagged=flagged,
            sources=[_source(p, p.n in cited) for p in passages], generated=generated,
            stopped=stopped, timings=timings)}

    def _fails_whole_checks(self, generated, passages, shown, question, asked, voice, closest, fits, weights) -> bool:
        """The optional whole-answer checks (chain.min_copied, require_asked_value, require_closest)."""
        cs = self.settings.chain
        frames = (voice.opener, voice.closer)
        if cs.min_copied and copied_share(generated, [p.text for p in shown], frames) < cs.min_copied:
            return True
        if cs.require_asked_value and asked and closest is not None and not carries(generated, asked):
            return True
        if cs.require_closest and closest is not None:
            # the answer is credited with the headings of the passages its values come from, not
            # of those it cites: "$4.99 [1]" under the heading Premium is still the Plus price
            origin = [p for p in passages if not unsupported(generated, [p.text])] or passages
            heads = " ".join(_heading(p) for p in origin)
            return fit(without_frames(generated, frames), question, asked, heads, weights) < fits[closest.n]
        return False

    def _contact(self) -> tuple[str, list[Passage]]:
        result = self.kb.search(self.settings.chain.handoff_query)
        contact, used = prompts.contact_details(result.passages if result.relevant else [])
        return contact, _renumber(used[:2])

    def _refuse(self, state: dict, voice: prompts.Voice) -> Iterator[dict]:
        contact, used = self._contact()
        text = voice.frame(prompts.refusal_text(contact, 1 if used else None))
        yield {"type": "token", "text": text}
        yield {"type": "answer", "answer": Answer(
            text=text, adapter=state["adapter"], kind="refusal", question=state["question"], refused=True,
            sources=[_source(p, True) for p in used],
            timings={"retrieve_s": round(state["retrieve_s"], 4), "total_s": round(time.perf_counter() - state["t0"], 4)})}

    def _converse(self, state: dict, voice: prompts.Voice, offer_person: bool) -> Iterator[dict]:
        messages = prompts.conversation_messages(state["message"], state["history"])
        names = self._proper_names()
        # small talk has no passages, so it may state no value at all: a price, a number, an
        # e-mail, a phone, a URL or a plan name there could only be made up
        gate = SentenceGate(lambda s: not extract_values(s, names) and not CITATION.search(s))
        timings, stats, pieces = {}, GenerationStats(), []
        stopped = yield from self._release(self._generate(state, messages, timings, stats), gate, pieces, stats)
        generated = "".join(pieces).strip()
        text, used = gate.text, []
        if not text and not stopped:
            text = voice.frame(prompts.SMALL_TALK.get(state["kind"], "How can I help you today?"))
            yield {"type": "token", "text": text}
        if offer_person and not stopped:
            contact, used = self._contact()
            extra = prompts.handoff_text(contact, 1 if used else None)
            yield {"type": "token", "text": "\n\n" + extra}
            text = f"{text}\n\n{extra}"
        timings["total_s"] = round(time.perf_counter() - state["t0"], 4)
        yield {"type": "answer", "answer": Answer(
            text=text, adapter=state["adapter"], kind="handoff" if state["kind"] == dialogue.HANDOFF else "conversation",
            question=state["message"], sources=[_source(p, True) for p in used], generated=generated,
            flagged=[v.text for v in extract_values(generated, names)] if gate.refused else [],
            stopped=stopped, timings=timings)}

    def _proper_names(self) -> set[str]:
        view = self.kb.view()
        if self._names[0] != view.generation or not self._names[1]:
            self._names = (view.generation, proper_names([d.page_content for d in view.docs]))
        return self._names[1]
