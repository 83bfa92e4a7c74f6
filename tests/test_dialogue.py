"""Turn classification, follow-up resolution and message hygiene, as plain functions."""

import pytest

from bot import dialogue as d
from bot.errors import RequestError


@pytest.mark.parametrize(
    "message, kind",
    [
        ("hello", d.GREETING), ("Hi there!", d.GREETING), ("Good morning", d.GREETING),
        ("thanks", d.THANKS), ("ok thanks a lot!", d.THANKS), ("Thank you so much", d.THANKS),
        ("bye", d.GOODBYE), ("Have a nice day", d.GOODBYE),
        ("That didn't help", d.COMPLAINT), ("this is not helpful", d.COMPLAINT), ("no, that's not it", d.COMPLAINT),
        ("can I talk to a person?", d.HANDOFF), ("I want to speak to a human about my refund", d.HANDOFF),
        ("Please connect me with an agent", d.HANDOFF),
        ("hi, how much is Plus?", d.INQUIRY), ("thanks, and how do I cancel?", d.INQUIRY),
        ("How much does Premium cost?", d.INQUIRY), ("Hello? My thermostat shows E4", d.INQUIRY),
    ],
)
def test_classify(message, kind):
    assert d.classify(message) == kind


HISTORY = [
    {"role": "user", "content": "How do I return my thermostat?"},
    {"role": "assistant", "content": "Start a return from your account [1]."},
    {"role": "user", "content": "thanks"},
    {"role": "assistant", "content": "You're welcome!"},
]


@pytest.mark.parametrize(
    "message, expected",
    [
        ("and how long does that take?", "How do I return my thermostat? and how long does that take?"),
        ("What about the Pro?", "How do I return my thermostat? What about the Pro?"),
        ("Do you ship to Canada?", "Do you ship to Canada?"),  # a new question stands alone
        ("How much is the Plus plan?", "How much is the Plus plan?"),
        ("Is there a fee for express shipping?", "Is there a fee for express shipping?"),
        ("How much is it per year?", "How do I return my thermostat? How much is it per year?"),
    ],
)
def test_follow_ups_are_resolved_against_the_last_inquiry(message, expected):
    assert d.standalone_question(message, HISTORY) == expected


def test_follow_up_without_history_is_left_alone():
    assert d.standalone_question("and how long does that take?", []) == "and how long does that take?"


def test_gradio_content_parts_are_read_as_text():
    history = [{"role": "user", "content": [{"type": "text", "text": "How do I return it?"}]}]
    assert d.standalone_question("how long does that take?", history).startswith("How do I return it?")


def test_control_and_bidi_characters_are_removed():
    assert d.clean_message("  Hi\x00 there\u202e\x1b[31m!  ", 100) == "Hi there[31m!"


@pytest.mark.parametrize("message, problem", [("", "empty"), ("   \x00 ", "empty"), ("x" * 101, "101 characters")])
def test_bad_messages_are_refused_with_a_reason(message, problem):
    with pytest.raises(RequestError, match=problem):
        d.clean_message(message, 100)
