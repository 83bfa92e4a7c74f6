"""The project's own promises about itself: CI runs README's test command; docs match the CLI."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, re.S)[:2]


def test_ci_runs_exactly_the_readme_test_command():
    run, test = readme_commands()
    assert "supportbot" in run and "pytest" in test
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test.strip() in [line.strip() for line in ci]


def test_readme_flags_exist():
    from bot.cli import build_parser

    parser = build_parser()
    text = (REPO / "README.md").read_text()
    for command, flag in re.findall(r"supportbot (sync|search)\b[^\n`]*?(--[a-z][a-z.\-_]+)", text):
        sub = parser._subparsers._group_actions[0].choices[command]
        assert flag in sub._option_string_actions, f"README uses `supportbot {command} {flag}`, which does not exist"
