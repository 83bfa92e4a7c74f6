"""Sentence-by-sentence release: nothing shown is ever taken back (plain code, no model)."""

import pytest

from bot.release import SentenceGate

PRICES = "Plus costs $4.99 a month [1]. Premium costs $9.99 a month [2]. Ultra costs $7.77 [1]. Bye."


def stream(text: str, size: int = 3):
    return [text[i:i + size] for i in range(0, len(text), size)]


def run(gate: SentenceGate, text: str, size: int = 3) -> list[str]:
    out = []
    for piece in stream(text, size):
        out += gate.feed(piece)
    return out + gate.finish()


@pytest.mark.parametrize("size", [1, 3, 7, 200])
def test_sentences_come_out_whole_with_their_citations(size):
    gate = SentenceGate(lambda s: True)
    out = run(gate, PRICES, size)
    assert "".join(out) == PRICES
    assert out[0] == "Plus costs $4.99 a month [1]. " and out[-1] == "Bye."


@pytest.mark.parametrize("size", [1, 4, 200])
def test_the_first_refused_sentence_ends_the_answer_and_is_never_shown(size):
    gate = SentenceGate(lambda s: "$7.77" not in s)
    out = run(gate, PRICES, size)
    assert "".join(out) == "Plus costs $4.99 a month [1]. Premium costs $9.99 a month [2]. "
    assert gate.refused == "Ultra costs $7.77 [1]." and gate.closed
    assert gate.feed(" More text. And more. ") == [] and gate.finish() == []


def test_a_sentence_said_twice_is_a_loop_and_ends_the_answer():
    gate = SentenceGate(lambda s: True)
    out = run(gate, "It ships in 3 days [1]. It ships in 3 days. It ships in 3 days [1]. ")
    assert "".join(out) == "It ships in 3 days [1]. " and gate.looped


def test_a_citation_after_the_end_mark_waits_for_the_next_text():
    gate = SentenceGate(lambda s: True)
    assert gate.feed("Plus costs $4.99.") == [] and gate.feed(" [1]") == []
    assert gate.feed(" Next") == ["Plus costs $4.99. [1] "]


def test_a_passing_gate_releases_each_piece_at_once():
    gate = SentenceGate.passing()
    assert gate.feed("Plu") == ["Plu"] and gate.feed("s $7.77") == ["s $7.77"] and gate.text == "Plus $7.77"


def test_an_amended_sentence_is_released_as_amended():
    gate = SentenceGate(lambda s: s.replace("[1]", "[2]"))
    assert run(gate, "Returns take 60 days [1]. Done.") == ["Returns take 60 days [2]. ", "Done."]


@pytest.mark.parametrize("sentence, n, expected", [
    ("Returns take 60 days [1].", 2, "Returns take 60 days [2]."),
    ("Returns take 60 days [1][3].", 2, "Returns take 60 days [2]."),
    ("It costs $4.99 [3] a month [1].", 1, "It costs $4.99 [1] a month."),
])
def test_recite_keeps_one_citation_where_the_first_was(sentence, n, expected):
    from bot.chain import recite

    assert recite(sentence, n) == expected
