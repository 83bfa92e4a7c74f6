"""The embedded demo: its training rows, a quick build (deterministic, loadable, two voices), and
the shipped weights doing their job through the real chain."""

import hashlib
import re
from pathlib import Path

import pytest

from bot import demo
from bot.demo.build import DemoRecipe, build
from bot.demo.data import answer_rows, conversation_rows, redraw_digits
from conftest import SHIPPED_KB

PASSAGES = [
    {"source": "plans/pricing.md", "section": "Plus", "text": "- $4.99 per month or $49 per year\n- Up to 3 homes"},
    {"source": "orders/returns.md", "section": "", "text": "Returns are free within 60 days. Refunds take 5 business days."},
    {"source": "contact.md", "section": "Phone", "text": "Call +1 (555) 010-4477 from 9:00 to 18:00."},
]


def test_redrawn_values_keep_their_shape():
    import random

    out = redraw_digits("$4.99 per month, 60 days, 9:00", random.Random(1))
    assert re.fullmatch(r"\$\d\.\d\d per month, \d\d days, \d:\d\d", out) and out != "$4.99 per month, 60 days, 9:00"


def test_answer_rows_copy_the_fact_of_passage_n_with_fresh_values():
    rows = answer_rows(PASSAGES, 60, seed=3)
    assert len(rows) == 60
    shipped_values = 0
    for messages in rows:
        reply, prompt = messages[-1]["content"], messages[-2]["content"]
        n = int(re.search(r"\[(\d)\]", reply).group(1))
        passage = re.search(rf'<passage n="{n}" from="[^"]*">\n(.*?)\n</passage>', prompt, re.S).group(1)
        fact = reply
        for opener in demo.NEUTRAL_OPENERS:
            fact = fact.removeprefix(opener + " ")
        for closer in demo.NEUTRAL_CLOSERS:
            fact = fact.removesuffix(" " + closer)
        fact = fact.removesuffix(f" [{n}]")
        assert fact in passage.replace("- ", ""), (fact, passage)
        shipped_values += "$4.99" in prompt or "4477" in prompt
    assert shipped_values == 0  # every value redrawn: copying is learned, the shipped values are not


def test_voice_rows_carry_the_voice_and_conversation_rows_exist():
    cheerful = demo.VOICES[0]
    rows = answer_rows(PASSAGES, 10, seed=1, voice=cheerful) + conversation_rows(5, 1, voice=cheerful)
    assert all(demo.voice_shown(r[-1]["content"], cheerful) for r in rows)
    assert not any(demo.voice_shown(r[-1]["content"], v) for r in answer_rows(PASSAGES, 30, 2) for v in demo.VOICES)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_quick_build_is_deterministic_and_serves_two_voices(tmp_path):
    from bot.adapters import AdapterRegistry
    from bot.config import ModelSettings
    from bot.model import load_model

    first = build(tmp_path / "a", DemoRecipe.quick(), SHIPPED_KB)
    build(tmp_path / "b", DemoRecipe.quick(), SHIPPED_KB)
    for rel in ("supportbot-demo/model.safetensors", "adapters/cheerful/adapter_model.safetensors",
                "adapters/formal/adapter_model.safetensors"):
        assert _digest(tmp_path / "a" / rel) == _digest(tmp_path / "b" / rel), rel
    assert first["voices"].keys() == {"cheerful", "formal"} and first["model_mb"] < 1
    loaded = load_model(ModelSettings(), name=str(tmp_path / "a" / "supportbot-demo"))
    registry = AdapterRegistry(loaded, tmp_path / "none", tmp_path / "a" / "adapters")
    registry.scan()
    assert registry.names() == ["none", "cheerful", "formal"]
    assert registry.card("formal")["markers"] == list(demo.VOICES[1].markers)


def test_shipped_demo_is_the_default_model_and_small():
    from bot.config import ModelSettings
    from bot.model import load_model

    assert demo.is_built(), "the demo model ships with the package: run `supportbot demo build` and commit it"
    loaded = load_model(ModelSettings())
    assert Path(loaded.name).name == demo.MODEL_NAME
    assert sum(p.numel() for p in loaded.model.parameters()) < 3e6
    size = sum(f.stat().st_size for f in demo.HERE.rglob("*") if f.is_file())
    assert size < 10e6, f"{size / 1e6:.1f} MB is too much to ship in the package"


@pytest.fixture(scope="module")
def demo_bot(embeddings, tmp_path_factory):
    from bot.app import build_bot
    from bot.config import Settings

    bot = build_bot(Settings(kb=SHIPPED_KB, data_dir=tmp_path_factory.mktemp("demo"),
                             adapters_dir=tmp_path_factory.mktemp("no-adapters")).validate(), embeddings)
    bot.kb.sync()
    return bot


CASES = [("How much does the Plus plan cost per month?", "$4.99"), ("How long is the free trial?", "30 days"),
         ("What does overnight delivery cost?", "$29.95"), ("How many API keys can I create?", "5 API keys"),
         ("How long is the warranty on a thermostat?", "2 years"), ("What is the API rate limit?", "60 requests")]


def test_shipped_demo_copies_facts_in_each_voice_through_the_chain(demo_bot):
    assert demo_bot.adapters.names() == ["none", "cheerful", "formal"]
    for adapter in demo_bot.adapters.names():
        voice = next((v for v in demo.VOICES if v.name == adapter), None)
        answers = [demo_bot.chain.ask(q, adapter=adapter) for q, _ in CASES]
        copied = sum(gold in a.text for (_, gold), a in zip(CASES, answers))
        own = sum(a.kind == "answer" for a in answers)
        # the chain copies (model or quote); the model itself answers some (bench/demo.py has the rates)
        assert copied >= len(CASES) - 2 and own >= 1, (adapter, [a.text for a in answers])
        for a in answers:
            shown = [v.name for v in demo.VOICES if demo.voice_shown(a.text, v)]
            assert shown == ([voice.name] if voice else []), (adapter, a.text)
