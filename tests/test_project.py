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
    commands = parser._subparsers._group_actions[0].choices
    text = (REPO / "README.md").read_text().replace("\\\n", " ")  # join continued shell lines
    checked = 0
    for command, rest in re.findall(r"supportbot (\w+)\b([^\n`#]*)", text):
        if command not in commands:
            continue
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z.\-_]*[a-z])", rest):
            assert flag in commands[command]._option_string_actions, \
                f"README uses `supportbot {command} {flag}`, which does not exist"
            checked += 1
    assert checked >= 15  # the README does show commands with flags
