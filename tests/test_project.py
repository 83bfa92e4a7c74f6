"""The project's own promises about itself: CI runs README's test command; docs match the CLI."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """README's shell blocks (```bash), continued lines joined."""
    text = (REPO / "README.md").read_text()
    return [b.replace("\\\n", " ").strip() for b in re.findall(r"```bash\n(.+?)\n```", text, re.S)]


def readme_test_command() -> str:
    """The README's install-and-test command: the first block that installs and runs pytest."""
    found = [b for b in readme_commands() if "pip install" in b and "pytest" in b]
    assert found, "README.md should give the install-and-test command in a ```bash block"
    return found[0]


def test_ci_runs_exactly_the_readme_test_command():
    run = next(b for b in readme_commands() if "pip install" in b and "pytest" not in b)
    assert "supportbot" in run
    test = readme_test_command()
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    wanted = [line.strip() for line in test.splitlines()]
    starts = [i for i in range(len(ci)) if ci[i:i + len(wanted)] == wanted]
    assert starts, f".ci/run should run README's test command verbatim:\n{test}"
    # ... inside a virtual environment it has just made, so nothing left on the machine hides a missing dependency
    before = "\n".join(ci[:starts[0]])
    assert re.search(r"rm -rf \.ci-venv\b", before) and re.search(r"-m venv \.ci-venv\b", before)
    assert 'PATH="$PWD/.ci-venv/bin:$PATH"' in before
    assert ".ci-venv/" in (REPO / ".gitignore").read_text().splitlines()


def test_readme_flags_exist():
    from bot.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    text = (REPO / "README.md").read_text().replace("\\\n", " ")  # join continued shell lines
    checked = 0
    for command, rest in re.findall(r"supportbot (\w+)\b([^\n`#&|]*)", text):  # up to && or a pipe
        if command not in commands:
            continue
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z.\-_]*[a-z])", rest):
            assert flag in commands[command]._option_string_actions, \
                f"README uses `supportbot {command} {flag}`, which does not exist"
            checked += 1
    assert checked >= 15  # the README does show commands with flags


def test_every_import_is_a_declared_dependency():
    """A package bot/ or ui/ imports (lazily too) must be in pyproject's dependencies: one that only
    happened to be installed (matplotlib for `eval`) let CI pass and a fresh install fail."""
    import ast
    import sys
    import tomllib
    from importlib.metadata import packages_distributions

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {canonical(re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0]) for d in project["dependencies"]}
    declared.add("torch")  # installed first, on purpose (README)
    # the scale-out engines' clients (bot/endpoint.py...), imported only where model.endpoint or store.url is set
    declared |= {canonical(re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0])
                 for d in project.get("optional-dependencies", {}).get("engines", [])}
    owners = packages_distributions()
    undeclared: dict[str, set[str]] = {}
    for path in sorted([*(REPO / "bot").rglob("*.py"), *(REPO / "ui").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            for top in {n.split(".")[0] for n in names}:
                if top in sys.stdlib_module_names or top in {"bot", "ui", "__future__"}:
                    continue
                if not {canonical(d) for d in owners.get(top, [])} & declared:
                    undeclared.setdefault(top, set()).add(str(path.relative_to(REPO)))
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"
