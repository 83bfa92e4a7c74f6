"""The command line: one JSON object on stdout with --json, logs on stderr, errors without tracebacks."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

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


def test_feedback_counts_and_exports_what_train_reads(tmp_path, capsys):
    from bot.feedback import FeedbackLog
    from bot.trainingdata import load_rows

    log = FeedbackLog(tmp_path / "data" / "feedback.jsonl")
    log.append("What does Plus cost?", "Plus costs $4.99 per month [1].", [{"n": 1, "source": "p.md"}], "none", "up")
    log.append("Hours?", "I won't guess.", [], "formal", "down")
    out = tmp_path / "export" / "rated.jsonl"
    assert main(["feedback", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["records"], got["up"], got["down"]) == (2, 1, 1) and got["where"].endswith("feedback.jsonl")
    assert [json.loads(line)["rating"] for line in out.read_text().splitlines()] == ["up", "down"]
    rows, report = load_rows(out)
    assert len(rows) == 1 and report.filtered == 1 and not report.bad  # train keeps the helpful one


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


def test_every_command_has_working_help(capsys, monkeypatch):
    """Each --help shows that command's own flags and the settings it reads, not all of them (it was
    222-241 lines each); every command still accepts every setting; `supportbot settings` has them all."""
    from bot.cli import ALIASES, COMMAND_SETTINGS, build_parser
    from bot.config import iter_fields

    monkeypatch.setenv("COLUMNS", "80")
    helps = {}
    for command, parser in build_parser()._subparsers._group_actions[0].choices.items():
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        helps[command] = out = capsys.readouterr().out
        assert done.value.code == 0 and "supportbot settings" in out, command
        assert len(out.splitlines()) <= 100, (command, len(out.splitlines()))
        assert ("--kb" in out) == ("kb" in COMMAND_SETTINGS.get(command, ())), command
        for name, _, _ in iter_fields():  # accepted by every command, shown or not
            assert ALIASES.get(name, [f"--{name}"])[0] in parser._option_string_actions, (command, name)
    assert "--knowledge.chunk_chars=900" in helps["sync"]
    assert "--serve.port" not in helps["sync"] and "--chain." not in helps["sync"]
    assert "--port" in helps["serve"] and "--chain.grounding=fallback" in helps["serve"]
    assert "--train." not in helps["serve"] and "--epochs" in helps["train"]


def test_settings_lists_every_setting_once(tmp_path, capsys, caplog, monkeypatch):
    from bot.config import example_toml, iter_fields

    monkeypatch.chdir(tmp_path)  # no supportbot.toml, no knowledge_base/: the sample help center
    code, out, err = run(capsys, "settings")
    assert code == 0 and out.startswith(example_toml())
    assert any("sample help center" in r.getMessage() for r in caplog.records)
    code, out, _ = run(capsys, "settings", "--json", "--retrieval.k", "6")
    rows = {r["name"]: r for r in json.loads(out)["settings"]}
    assert code == 0 and list(rows) == [name for name, _, _ in iter_fields()]
    assert rows["retrieval.k"]["default"] == 4 and rows["retrieval.k"]["value"] == 6
    assert rows["retrieval.k"]["env"] == "SUPPORTBOT_RETRIEVAL_K" and rows["retrieval.k"]["help"]
    assert rows["kb"]["default"] == "knowledge_base" and Path(rows["kb"]["value"]).is_dir()


SOURCES = ("pyproject.toml", "README.md", "bot", "ui", "knowledge_base")  # what `pip install .` reads


def _fresh_venv(tmp_path):
    """A new venv with supportbot pip-installed (not editable) from a copy of the checkout.

    The heavy dependencies are not downloaded again: a .pth file puts this interpreter's
    site-packages after the venv's own, so only supportbot itself is installed into the venv.
    """
    import sys
    import sysconfig
    from importlib.metadata import version

    from conftest import REPO

    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
        else:
            shutil.copy2(REPO / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    here = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "_supportbot_test_deps.pth").write_text("".join(f"{p}\n" for p in here))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPPORTBOT_", "PYTHON", "PIP_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_ROOT_USER_ACTION="ignore", PIP_NO_INDEX="1")
    setuptools = tuple(int(x) for x in version("setuptools").split(".")[:2])
    assert setuptools >= (70, 1), "the test extra brings setuptools>=70.1, which builds the wheel offline here"
    proc = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", str(src)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # every file the code may read from its own folder is in the wheel (package-data), the sample too
    wanted = {f"{f.relative_to(src)}" for d in ("bot", "ui") for f in (src / d).rglob("*") if f.is_file()}
    wanted |= {f"bot/sample_kb/{f.relative_to(src / 'knowledge_base')}" for f in (src / "knowledge_base").rglob("*")
               if f.is_file()}
    missing = sorted(name for name in wanted if not (Path(site) / name).is_file())
    assert not missing, f"not in the installed package (pyproject's package-data): {missing}"
    shutil.rmtree(src)  # the installed package must not lean on the copy it was built from
    return venv, Path(site), env


@pytest.mark.slow  # ~30 s: a venv, a wheel build and three processes that load torch
def test_installed_console_script_works_from_any_folder(tmp_path):
    from conftest import SHIPPED_KB

    venv, site, env = _fresh_venv(tmp_path)
    exe = venv / "bin" / "supportbot"
    elsewhere = tmp_path / "elsewhere"  # no knowledge_base/, no supportbot.toml: not the checkout
    elsewhere.mkdir()

    def supportbot(*argv):
        return subprocess.run([exe, *argv], capture_output=True, text=True, env=env, cwd=elsewhere, timeout=180)

    where = subprocess.run([venv / "bin" / "python", "-c", "import bot; print(bot.__file__)"], capture_output=True,
                           text=True, env=env, cwd=elsewhere).stdout
    assert Path(where).is_relative_to(site), where  # the installed copy, not the checkout

    proc = supportbot("--help")
    assert proc.returncode == 0 and "search" in proc.stdout and "supportbot settings" in proc.stdout

    proc = supportbot("search", "How much is the Plus plan?", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["relevant"] and result["passages"][0]["source"] == "plans/pricing-and-plans.md"
    shipped = site / "bot" / "sample_kb"
    assert "sample help center" in proc.stderr and str(shipped) in proc.stderr  # said once, in a log line
    assert (elsewhere / ".supportbot" / "index").is_dir()  # the index lives in the folder it ran from

    proc = supportbot("sync", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["files_total"] == len(list(SHIPPED_KB.rglob("*.md"))) and not report["added"]

    proc = supportbot("sync", "--kb", "no-such-folder", "--json")
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: knowledge-base folder no-such-folder does not exist")
