"""`supportbot eval`: the metrics as a table of cases, then a real run of all four modes on a tiny
Llama with a real voice over a copy of the shipped knowledge base."""

import json

import pytest

from bot.cli import main
from bot.evaluate import MODES, edit_facts, contains, declined, load_questions, markdown_table, percentile, token_f1
from conftest import SHIPPED_KB, write


@pytest.mark.parametrize("answer, gold, expected", [
    ("The Plus plan costs $4.99 per month [1].", "$4.99", True),
    ("It costs $4.9 per month", "$4.99", False),
    ("Returns: within 60 DAYS of delivery", "60 days", True),
    ("anything", "", False),
])
def test_contains(answer, gold, expected):
    assert contains(answer, gold) is expected


@pytest.mark.parametrize("answer, gold, expected", [
    ("a b c", "a b c", 1.0), ("a b", "a b c d", 2 * 1.0 * 0.5 / 1.5), ("x", "a", 0.0), ("", "a", 0.0)])
def test_token_f1(answer, gold, expected):
    assert token_f1(answer, gold) == pytest.approx(expected)


def test_declines_and_percentiles():
    assert declined("I'm sorry, I couldn't find that in our help center, so I won't guess.")
    assert not declined("The Plus plan costs $4.99 [1].")
    assert percentile([3, 1, 2, 4], 0.5) == 3 and percentile([], 0.5) is None


def test_question_files_are_checked(tmp_path):
    write(tmp_path / "qa.jsonl", '{"question": "a?", "answer": "1"}\nnot json\n')
    with pytest.raises(Exception, match="line 2: not JSON"):
        load_questions(tmp_path / "qa.jsonl")


def test_fact_edits_use_values_found_nowhere(tmp_path):
    import shutil

    shutil.copytree(SHIPPED_KB, tmp_path / "kb")
    qs = [{"question": "Plus?", "answer": "$4.99", "source": "plans/pricing-and-plans.md"},
          {"question": "x", "answer": "no digits", "source": "plans/pricing-and-plans.md"},
          {"question": "y", "answer": "$1.23", "source": "missing.md"}]
    edited = edit_facts(tmp_path / "kb", qs, 5, seed=1)
    assert len(edited) == 1 and edited[0]["old"] == "$4.99"
    text = (tmp_path / "kb/plans/pricing-and-plans.md").read_text()
    assert "$4.99" not in text and edited[0]["answer"] in text
    assert edited[0]["answer"] not in (SHIPPED_KB / "plans/pricing-and-plans.md").read_text()


def test_an_edited_fact_changes_in_every_file_stating_it_and_nowhere_else(tmp_path):
    write(tmp_path / "kb/shop.md", "The Power Adapter costs $25. Shipping is free over $250, or $25.50.")
    write(tmp_path / "kb/help.md", "Install the Power Adapter ($25, free with the Pro).")
    write(tmp_path / "kb/other.md", "A sensor pack is $25.")  # the same value, another fact: left alone
    qs = [{"question": "Adapter?", "answer": "$25", "source": "shop.md", "also_stated_in": ["help.md"]}]
    [edited] = edit_facts(tmp_path / "kb", qs, 5, seed=1)
    new = edited["answer"]
    assert (tmp_path / "kb/shop.md").read_text() == f"The Power Adapter costs {new}. Shipping is free over $250, or $25.50."
    assert (tmp_path / "kb/help.md").read_text() == f"Install the Power Adapter ({new}, free with the Pro)."
    assert (tmp_path / "kb/other.md").read_text() == "A sensor pack is $25."
    assert edit_facts(tmp_path / "kb", [{"question": "x", "answer": "25.50", "source": "shop.md"}], 5, seed=1) == []


def test_shipped_questions_name_every_file_that_states_their_value():
    """A gold value stated as the same fact in another file must be listed there, or the edit in
    the benchmarks leaves the help center contradicting itself (seen: the password length)."""
    questions = load_questions(SHIPPED_KB.parent / "bot" / "models" / "qa.jsonl")
    for q in questions:
        for rel in q.get("also_stated_in", ()):
            assert q["answer"] in (SHIPPED_KB / rel).read_text(encoding="utf-8"), (q["question"], rel)


def test_eval_runs_four_modes_and_writes_json_table_and_chart(tiny_base, voices_dir, tmp_path, capsys):
    code = main(["eval", "--model", str(tiny_base), "--adapters-dir", str(voices_dir), "--adapter", "sunny",
                 "--data-dir", str(tmp_path / "data"), "--limit", "3", "--stale-edits", "2",
                 "--model.max_new_tokens", "8", "--out", str(tmp_path / "out"), "--json", "-q"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["modes"]) == set(MODES) and report["adapter"] == "sunny"
    rag, base = report["modes"]["rag"], report["modes"]["base"]
    assert rag["questions"] == 3 and rag["out_of_scope_questions"] >= 1
    assert rag["retrieval_hit"] > 0 and base["retrieval_hit"] == 0  # only the chain retrieves
    assert report["stale_edits"] == 2 and rag["stale_new_value"] is not None
    assert rag["first_token_p50_s"] > 0
    for name in ("eval.json", "eval.md", "eval.png"):
        assert (tmp_path / "out" / name).stat().st_size > 100
    assert markdown_table(report).count("\n") == 13
    assert not (SHIPPED_KB / ".supportbot").exists()  # the shipped folder was copied, never edited


def test_a_passage_filed_twice_counts_for_both_files(tiny_base, embeddings, tmp_path):
    """The same page in two folders takes one slot of the top k (its twin listed in also_in): a
    question whose gold source is either file is a retrieval hit, as in bench/retrieval.py."""
    from bot.app import build_bot
    from bot.config import Settings
    from bot.evaluate import _ask
    from conftest import load_tiny

    page = "# Refunds\n\nRefunds take 5 business days to reach your card after we receive the return.\n"
    write(tmp_path / "kb/help/refunds.md", page)
    write(tmp_path / "kb/archive/refunds.md", page)
    write(tmp_path / "kb/shipping.md", "# Shipping\n\nStandard shipping costs $6.95 and takes 3 to 5 days.\n")
    settings = Settings(kb=tmp_path / "kb", data_dir=tmp_path / "data", adapters_dir=tmp_path / "none")
    settings.model.name = str(tiny_base)
    settings.model.max_new_tokens = 8
    bot = build_bot(settings.validate(), embeddings, loaded=load_tiny(tiny_base))
    bot.kb.sync()
    row = _ask(bot, "rag", "How long do refunds take to reach my card?", "none")
    assert row["retrieved"].count("help/refunds.md") == row["retrieved"].count("archive/refunds.md") == 1
