"""Copy-friendly decoding: which character the passages dictate next (table of cases), and the
logits processor forcing it on real scores."""

import pytest

from bot.copying import CopyDigits, allowed_digits, next_char, sentence_lines

EVIDENCE = sentence_lines(["- $4.99 per month or $49 per year (save 18%)\n- Everything in Free",
                           "International returns cost a flat $15, deducted from the refund."])


@pytest.mark.parametrize("answer, expected", [
    ("Here is what I found. $", "4"),              # a sentence that starts like a passage sentence
    ("Here is what I found. $4", "."),             # ... goes on as that sentence does
    ("Sure. $4.", "9"),
    ("international returns cost a flat $", "1"),  # wording matched: the passage's digit comes next
    ("returns cost a flat $15", ","),              # the passage's number ends here
    ("The weather is fine and", None),             # wording found nowhere: no constraint
])
def test_next_char_follows_the_passage(answer, expected):
    assert next_char(answer, EVIDENCE) == expected


@pytest.mark.parametrize("answer, expected", [
    ("It costs $", {"4", "1"}), ("It costs $4", {"9"}), ("It costs $4.", {"9"}), ("It costs $4.99", set()),
    ("It is fine", None), ("see [", None)])
def test_a_begun_number_stays_a_prefix_of_a_passage_number(answer, expected):
    assert allowed_digits(answer, ["4.99", "49", "18", "15"]) == expected


class _Tok:
    """Decodes ids as characters: id i is chr(i)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(int(i)) for i in ids)


def test_processor_forces_the_passage_digit_and_ends_numbers():
    import torch

    digits = {str(d): [ord(str(d))] for d in range(10)}
    proc = CopyDigits(_Tok(), ["Returns cost a flat $15, deducted."], prompt_len=0, digits=digits)
    ids = torch.tensor([[ord(c) for c in "returns cost a flat $"]])
    scores = torch.zeros(1, 128)
    scores[0, ord("7")] = 5.0  # the model would rather write 7
    out = proc(ids, scores.clone())
    assert int(out.argmax()) == ord("1") and torch.isinf(out[0, ord("7")])
    ids = torch.tensor([[ord(c) for c in "returns cost a flat $15"]])
    out = proc(ids, scores.clone())
    assert all(torch.isinf(out[0, ord(d)]) for d in "0123456789") and out[0, ord(",")] == 0
    ids = torch.tensor([[ord(c) for c in "Nothing like it"]])
    assert torch.equal(proc(ids, scores.clone()), scores)
