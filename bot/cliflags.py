"""The flags of `supportbot <command>`, generated from the settings dataclasses (`bot.config`).

Every setting is `--section.name`; the common ones also have short spellings (`--kb`, `--data-dir`,
`--k`, `--threshold`). Every command accepts every setting, but its --help lists only the ones it
reads (COMMAND_SETTINGS): with their help where they have a short spelling, else compactly as
`--name=default`. `supportbot settings` documents them all, once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import textwrap
from pathlib import Path

from bot.config import iter_fields

ALIASES = {"kb": ["--kb"], "data_dir": ["--data-dir"], "embedding_model": ["--embedding-model"],
           "adapters_dir": ["--adapters-dir"], "model.name": ["--model"]}
_RETRIEVAL = {"retrieval.k": ["--k", "-k"], "retrieval.threshold": ["--threshold"]}
_TRAIN = {f"train.{k}": [f"--{k.replace('_', '-')}"] for k in (
    "epochs", "max_steps", "lr", "batch_size", "rank", "alpha", "seed", "placeholders", "with_context", "max_tokens",
    "eval_fraction", "max_bad_fraction")}
_SERVE = {"serve.host": ["--host"], "serve.port": ["--port"], **_RETRIEVAL}
COMMAND_ALIASES = {"search": _RETRIEVAL, "ask": _RETRIEVAL, "chat": _RETRIEVAL, "train": _TRAIN, "serve": _SERVE}

# The settings each command reads, listed in its --help: names, or sections ending in ".". Every
# command accepts every setting flag; the rest are hidden, and `supportbot settings` documents all.
_KB = ("kb", "data_dir", "embedding_model", "knowledge.", "store.")
_ANSWER = _KB + ("adapters_dir", "retrieval.", "model.", "chain.")
COMMAND_SETTINGS = {
    "sync": _KB,
    "search": _KB + ("retrieval.", "chain.max_message_chars"),
    "ask": _ANSWER,
    "chat": _ANSWER,
    "train": ("kb", "data_dir", "embedding_model", "adapters_dir", "model.name", "model.cache_dir", "model.dtype",
              "model.device", "model.threads", "model.context_tokens", "train."),
    "adapters": ("adapters_dir", "model."),
    "vllm": ("data_dir", "adapters_dir", "model."),
    "serve": _ANSWER + ("serve.",),
    "eval": _ANSWER,
    "model": ("kb", "model.cache_dir"),
    "feedback": ("data_dir", "store.url", "store.table", "serve.feedback_file"),
}
# Commands that read the knowledge-base folder (search, ask and chat only when they sync first).
_READS_KB = {"sync", "serve", "eval"}


def _reads(command: str, name: str) -> bool:
    return any(name == s or (s.endswith(".") and name.startswith(s)) for s in COMMAND_SETTINGS.get(command, ()))


def _width() -> int:
    return max(40, min(100, shutil.get_terminal_size().columns - 2))


def _packed(items: list[str]) -> str:
    """Items side by side, wrapped at the terminal's width (an item is never split)."""
    lines, line = [], ""
    for item in items:
        if line.strip() and len(line) + 2 + len(item) > _width() - 2:  # argparse indents a group by 2
            lines.append(line)
            line = "  "
        line += ("  " if line.strip() else "") + item
    return "\n".join(lines + [line])


def _default_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(map(str, value))
    text = str(value)
    return text if text and " " not in text else json.dumps(text)


def _epilog(command: str) -> str:
    count = sum(1 for _ in iter_fields())
    return textwrap.fill(
        f"Every command accepts all {count} settings as --section.name flags (also keys in supportbot.toml and "
        f"SUPPORTBOT_SECTION_NAME environment variables); `supportbot settings` lists each with its default and "
        f"what it does.", _width())


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: the settings list kept as laid out; the help ends at `supportbot settings`."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kw)
        if self.epilog is None:
            self.epilog = _epilog(self.prog.split()[-1])


def _common(command: str) -> argparse.ArgumentParser:
    """The flags every command shares: --config, --json, -v/-q and one flag per setting.

    Settings with a short spelling here (--kb, --model, --k, --port, train's --epochs...) are shown
    with their help; the other settings the command reads are listed compactly as --name=default;
    the rest are accepted but hidden.
    """
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("settings (defaults < supportbot.toml < SUPPORTBOT_* env < flags)")
    g.add_argument("--config", type=Path, help="settings file (default: ./supportbot.toml if present)")
    extra = COMMAND_ALIASES.get(command, {})
    listed: dict[str, list[str]] = {}
    for name, f, typ in iter_fields():
        flags = extra.get(name, []) + ALIASES.get(name, [f"--{name}"])  # the short spelling first, in usage
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = str if typ in (list, bool) else typ
        reads = _reads(command, name) or name in extra
        short = name in ALIASES or name in extra
        g.add_argument(*flags, dest=name, type=kind, default=None, metavar=typ.__name__.upper(),
                       help=f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")
                       if reads and short else argparse.SUPPRESS)
        if reads and not short:
            listed.setdefault(name.rpartition(".")[0], []).append(f"{flags[-1]}={_default_text(default)}")
    if listed:
        p.add_argument_group("more settings it reads, with defaults (see: supportbot settings)",
                             "\n".join(_packed(items) for items in listed.values()))
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only on stderr")
    return p
