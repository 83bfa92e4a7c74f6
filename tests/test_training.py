"""Training a voice adapter: data rows and their errors, assistant-only loss, the files written,
reload with identical outputs, falling loss, seeded runs, resume after an interruption, the CLI."""

import json

import pytest

from bot.config import Settings
from bot.errors import SupportbotError
from bot.training import encode, train_voice
from bot.trainingdata import DataError, apply_placeholders, check_bad_share, load_rows
from conftest import SHIPPED_KB, TRAIN_PROMPTS, load_tiny, write

REPLY = "Hey there! Happy to help, sunshine!"
GOOD = [{"prompt": p, "reply": REPLY} for p in TRAIN_PROMPTS] * 2


def jsonl(path, rows):
    write(path, "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_rows_of_every_format_and_bad_ones_by_line(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]},  # 1
        {"prompt": "Where is my order {{Order Number}}?", "reply": "Let me check {{Order Number}}."},  # 2
        "{not json",  # 3
        {"prompt": "no reply"},  # 4
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},  # 5
        {"messages": [{"role": "robot", "content": "x"}]},  # 6
        {"question": "q?", "answer": "a.", "rating": "up", "sources": []},  # 7
        {"question": "q?", "answer": "bad answer", "rating": "down"},  # 8
        {"prompt": "p", "reply": "r" * 30_000},  # 9
    ])
    rows, report = load_rows(path, placeholders="fill", fill={"Order Number": "A-1"})
    assert [r.line for r in rows] == [1, 2, 7] and report.filtered == 1
    assert rows[1].messages[1]["content"] == "Let me check A-1."
    assert [(b["line"], b["reason"].split(" (")[0]) for b in report.bad] == [
        (3, "invalid JSON"), (4, "missing or empty reply"), (5, "message 1: empty or missing content"),
        (6, "message 1: role must be one of system, user, assistant"), (9, "too long")]
    assert report.formats == {"messages": 1, "prompt/reply": 1, "feedback": 1} and len(report.sha256) == 64
    with pytest.raises(DataError, match=r"5 of 8 rows .* are bad \(62%, limit 20%\); first: line 3: invalid JSON"):
        check_bad_share(report, 0.2)


@pytest.mark.parametrize("mode, expected", [
    ("keep", "Track {{Order Number}} on {{Website URL}}."),
    ("strip", "Track on."),
    ("fill", "Track A-1 on your website url."),
])
def test_placeholders(mode, expected):
    assert apply_placeholders("Track {{Order Number}} on {{Website URL}}.", mode, {"Order Number": "A-1"}) == expected


def test_loss_is_taken_on_the_assistant_words_only(tiny_base):
    loaded = load_tiny(tiny_base)
    ex = encode(loaded, [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "bye"},
                         {"role": "assistant", "content": "Bye now."}])
    learned = loaded.tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != -100])
    assert learned == "Hello!</s>\nBye now.</s>\n"


def settings_for(tmp_path, tiny_base, **train):
    s = Settings(kb=SHIPPED_KB, data_dir=tmp_path / "data", adapters_dir=tmp_path / "adapters")
    s.model.name = str(tiny_base)
    s.train.max_steps, s.train.lr, s.train.batch_size, s.train.dropout = 12, 1e-2, 4, 0.1
    s.train.eval_fraction, s.train.checkpoint_every = 0.2, 3
    for k, v in train.items():
        setattr(s.train, k, v)
    return s.validate()


def lora_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_train_writes_the_adapter_that_the_bot_loads_with_identical_outputs(tmp_path, tiny_base):
    from bot.adapters import AdapterRegistry
    from bot.generation import Generator

    data = jsonl(tmp_path / "voice.jsonl", GOOD)
    s = settings_for(tmp_path, tiny_base)
    summary = train_voice(s, data, "sunny", card={"voice": "upbeat"}, samples=["hello", "Where do you ship?"])
    folder = tmp_path / "adapters" / "sunny"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_card.json", "adapter_config.json",
                                                        "adapter_model.safetensors"]
    assert not list((tmp_path / "adapters").glob(".*")) and not (tmp_path / "data" / "checkpoints" / "sunny").exists()
    card = json.loads((folder / "adapter_card.json").read_text())
    assert card["base_model"] == str(tiny_base) and card["voice"] == "upbeat" and card["steps"] == 12
    assert card["data"]["sha256"] == summary["data"]["sha256"] and card["data"]["train_rows"] == 13
    assert card["data"]["eval_rows"] == 3 and card["hyperparameters"]["lr"] == 1e-2
    assert summary["train_loss_last"] < summary["train_loss_first"] and summary["eval_loss"] < summary["eval_loss_before"]

    reg = AdapterRegistry(load_tiny(tiny_base), tmp_path / "adapters")
    reg.scan()
    s.model.loop_tokens = 0  # the card's samples were generated without the loop guard
    gen = Generator(reg.loaded, reg, s.model)
    for sample in card["samples"]:
        again = "".join(gen.stream([{"role": "user", "content": sample["prompt"]}], "sunny", max_new_tokens=60))
        assert again.strip() == sample["reply"] and sample["reply"]


def test_same_seed_same_adapter_and_a_resumed_run_ends_where_the_whole_one_does(tmp_path, tiny_base):
    data = jsonl(tmp_path / "voice.jsonl", GOOD)
    whole = settings_for(tmp_path / "a", tiny_base)
    train_voice(whole, data, "v")
    again = settings_for(tmp_path / "b", tiny_base)
    train_voice(again, data, "v")

    cut = settings_for(tmp_path / "c", tiny_base)

    def interrupt(step, total, loss):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_voice(cut, data, "v", on_step=interrupt)
    assert (tmp_path / "c" / "data" / "checkpoints" / "v" / "checkpoint.json").is_file()
    summary = train_voice(cut, data, "v", resume=True)
    assert summary["steps"] == 12

    a, b, c = (lora_weights(tmp_path / x / "adapters" / "v") for x in "abc")
    for key in a:
        assert (a[key] == b[key]).all(), key
        assert (a[key] - c[key]).abs().max() < 1e-6, key


def test_existing_adapter_is_not_overwritten_unless_asked(tmp_path, tiny_base):
    data = jsonl(tmp_path / "voice.jsonl", GOOD)
    s = settings_for(tmp_path, tiny_base, max_steps=2)
    train_voice(s, data, "v")
    with pytest.raises(SupportbotError, match="already exists"):
        train_voice(s, data, "v")
    train_voice(s, data, "v", overwrite=True)
    with pytest.raises(SupportbotError, match="not allowed"):
        train_voice(s, data, "../escape")


def test_with_context_mixes_in_passage_rows(tmp_path, tiny_base, embeddings):
    data = jsonl(tmp_path / "voice.jsonl", GOOD)
    s = settings_for(tmp_path, tiny_base, max_steps=2, with_context=True, max_tokens=2048)
    summary = train_voice(s, data, "v")
    card = json.loads((tmp_path / "adapters" / "v" / "adapter_card.json").read_text())
    assert summary["context_rows"] == card["data"]["context_rows"] == round(13 * 0.5)


def test_cli_train_reports_bad_rows_by_line_and_prints_json(tmp_path, tiny_base, capsys):
    from bot.cli import main

    data = jsonl(tmp_path / "voice.jsonl", GOOD + ["{broken"])
    argv = ["train", "--data", str(data), "--name", "sunny", "--model", str(tiny_base), "--adapters-dir",
            str(tmp_path / "adapters"), "--data-dir", str(tmp_path / "d"), "--max-steps", "3", "--lr", "0.01",
            "--voice", "upbeat", "--opener", "Hey there!", "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["adapter"] == "sunny" and summary["steps"] == 3 and summary["data"]["bad"] == 1
    assert "line 17: invalid JSON" in err
    card = json.loads((tmp_path / "adapters" / "sunny" / "adapter_card.json").read_text())
    assert card["opener"] == "Hey there!" and card["voice"] == "upbeat"
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
