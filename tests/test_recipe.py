"""`supportbot model build` end to end on a tiny Llama built in the test: the grounded LoRA, its
merge, and a voice on top, each saved as safetensors with a card naming its base."""

import json

from bot.recipe import ModelRecipe, build
from bot.rows import VOICES, answer_rows, conversation_rows, voice_shown
from conftest import SHIPPED_KB


def test_a_quick_build_writes_grounded_and_every_voice(tiny_base, tmp_path):
    info = build(tmp_path / "out", ModelRecipe.quick(), kb=SHIPPED_KB, base=tiny_base)
    grounded = tmp_path / "out" / "grounded"
    assert (grounded / "adapter_model.safetensors").is_file()
    assert json.loads((grounded / "adapter_card.json").read_text())["base_model"] == tiny_base.name
    for voice in VOICES:
        folder = tmp_path / "out" / "voices" / voice.name
        card = json.loads((folder / "adapter_card.json").read_text())
        assert (folder / "adapter_model.safetensors").is_file() and not list(folder.glob("*.bin"))
        assert card["base_model"] == tiny_base.name + "-supportbot" and card["markers"] == list(voice.markers)
        assert info["voices"][voice.name]["steps"] == ModelRecipe.quick().voice_steps
    assert json.loads((tmp_path / "out" / "build.json").read_text())["grounded"]["steps"] == 3


def test_rows_redraw_every_value_and_frame_each_voice():
    passages = [{"source": "plans.md", "section": "Plus", "text": "Plus costs $4.99 per month. It has 12 months of history."},
                {"source": "ship.md", "section": "Canada", "text": "Shipping to Canada takes 5 to 8 business days."}]
    rows = answer_rows(passages, 20, seed=1, keep=2)
    replies = [r[-1]["content"] for r in rows]
    assert all("$4.99" not in r[-2]["content"] and "$4.99" not in reply for r, reply in zip(rows, replies))
    cheerful = answer_rows(passages, 20, seed=1, voice=VOICES[0], keep=2)
    assert sum(voice_shown(r[-1]["content"], VOICES[0]) for r in cheerful) >= 16
    assert not any(voice_shown(reply, v) for reply in replies for v in VOICES)
    talk = conversation_rows(10, seed=2, voice=VOICES[1])
    assert all(r[-1]["content"] in sum((getattr(VOICES[1], k) for k in
                                        ("greeting", "thanks", "goodbye", "complaint", "handoff")), ()) for r in talk)
