"""The command line: one JSON object on stdout with --json, logs on stderr, errors without tracebacks."""

import json
import os
import shutil
import subprocess

from bot.cli import main
from conftest import SHIPPED_KB


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sync_and_search_json(tmp_path, capsys):
    kb = tmp_path / "kb"
    shutil.copytree(SHIPPED_KB, kb)
    common = ["--kb", str(kb), "--data-dir", str(tmp_path / "data")]
    code, out, err = run(capsys, "sync", *common, "--json")
    report = json.loads(out)  # exactly one JSON object
    assert code == 0 and report["files_total"] == len(list(kb.rglob("*.md"))) and report["chunks_total"] > 50
    assert {"added", "changed", "deleted", "unchanged", "skipped", "seconds"} <= report.keys()

    code, out, _ = run(capsys, "search", "How long do refunds take to arrive?", *common, "--k", "3", "--json")
    result = json.loads(out)
    assert code == 0 and result["relevant"] and len(result["passages"]) == 3
    top = result["passages"][0]
    assert top["source"] == "orders/returns-and-refunds.md" and top["n"] == 1
    assert {"source", "section", "text", "score"} <= top.keys() and 0 < top["score"] <= 1

    code, out, _ = run(capsys, "search", "Who won the football world cup in 2014?", *common, "--json")
    assert json.loads(out)["relevant"] is False
    code, out, _ = run(capsys, "search", "Who won the football world cup in 2014?", *common)
    assert out.startswith("Nothing relevant found")


def test_errors_are_one_clear_message(tmp_path, capsys):
    code, out, err = run(capsys, "sync", "--kb", str(tmp_path / "missing"), "--data-dir", str(tmp_path / "d"))
    assert code == 2 and out == ""
    assert "does not exist" in err and "Traceback" not in err
    code, _, err = run(capsys, "sync", "--kb", str(tmp_path), "--data-dir", str(tmp_path / "inside"))
    assert code == 2 and "inside the knowledge base" in err
    (tmp_path / "kb").mkdir()
    common = ["--kb", str(tmp_path / "kb"), "--data-dir", str(tmp_path / "d")]
    for question, says in [(" \u202e ", "the message is empty"), ("x" * 5000, "5,000 characters long")]:
        code, out, err = run(capsys, "search", question, *common, "--json")
        assert code == 2 and out == "" and says in err and "Traceback" not in err


def test_console_script_is_installed(tmp_path):
    exe = shutil.which("supportbot")
    assert exe, "pip install -e . should put `supportbot` on PATH"
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "a.md").write_text("# Hours\n\nWe open at 9:00.")
    env = {**os.environ, "SUPPORTBOT_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([exe, "sync", "--kb", str(kb), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["added"] == ["a.md"]
    assert (tmp_path / "data" / "index" / "CURRENT").is_file()  # the env variable chose the data dir


def test_ask_and_adapters_json(tmp_path, capsys, tiny_base, voices_dir):
    common = ["--kb", str(SHIPPED_KB), "--data-dir", str(tmp_path / "data"), "--model", str(tiny_base),
              "--adapters-dir", str(voices_dir), "--model.max_new_tokens", "12"]
    code, out, _ = run(capsys, "ask", "How much is the Plus plan?", *common, "--adapter", "sunny", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["adapter"] == "sunny" and answer["refused"] is False
    assert {"answer", "adapter", "refused", "flagged", "sources"} <= answer.keys()
    assert {"n", "source", "section", "score", "text"} <= answer["sources"][0].keys()
    code, out, _ = run(capsys, "ask", "What is the airspeed of a swallow?", *common, "--json")
    assert json.loads(out)["refused"] is True

    code, out, _ = run(capsys, "adapters", *common, "--json")
    listed = {a["name"]: a for a in json.loads(out)["adapters"]}
    assert code == 0 and listed["sunny"]["status"] == "loaded" and listed["sunny"]["voice"] == "warm and upbeat"

    code, out, err = run(capsys, "ask", "hi", *common, "--adapter", "grumpy")
    assert code == 2 and "adapter 'grumpy' is not available" in err and "Traceback" not in err


def test_ask_without_a_model_says_what_to_do(tmp_path, capsys):
    code, out, err = run(capsys, "ask", "hi", "--kb", str(SHIPPED_KB), "--data-dir", str(tmp_path / "d"),
                         "--model", "./no/such/model")
    assert code == 2 and out == "" and "no such folder" in err and "Traceback" not in err


def test_terminal_chat_keeps_history_and_switches_adapters(tmp_path, capsys, monkeypatch, tiny_base, voices_dir):
    lines = iter(["hello", "/adapter formal", "hello", "/adapter grumpy", "/rescan", "/quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    code, out, err = run(capsys, "chat", "--kb", str(SHIPPED_KB), "--data-dir", str(tmp_path / "data"),
                         "--model", str(tiny_base), "--adapters-dir", str(voices_dir), "--adapter", "sunny",
                         "--model.max_new_tokens", "12")
    assert code == 0 and "available: none, formal, sunny" in err
    replies = [line for line in out.splitlines() if line.startswith("bot> ")]
    assert len(replies) == 2 and replies[0].startswith("bot> Hey there") and replies[1].startswith("bot> Dear customer")
    assert "(adapter: formal)" in out and "adapter 'grumpy' is not available" in out
    assert "(adapters: none, formal, sunny)" in out


def test_every_command_has_working_help(capsys):
    import pytest

    from bot.cli import build_parser

    for command in build_parser()._subparsers._group_actions[0].choices:
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0 and "--kb" in capsys.readouterr().out, command
