"""Training rows for a voice adapter, read from JSONL, with every bad row reported by line number.

Accepted per line:
- `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}` (OpenAI / TRL chat
  format; the last message must be the assistant's);
- `{"prompt": "...", "reply": "..."}`;
- the chat page's feedback file: `{"question", "answer", "rating", ...}`, of which only answers
  rated up are used (the others are counted as filtered, not as bad).

Template placeholders such as `{{Order Number}}` (common in public support datasets) are kept,
stripped, or filled (`--fill "Order Number=A-1234"`; unnamed ones become "your order number").
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import SupportbotError

PLACEHOLDER = re.compile(r"\{\{\s*([^{}]{1,60}?)\s*\}\}")
ROLES = {"system", "user", "assistant"}
UP = {1, "1", "+1", "up", "good", "yes", "true", True, "👍"}


class DataError(SupportbotError):
    """The training file cannot be used (missing, or too many bad rows)."""


@dataclass
class Row:
    messages: list[dict]
    line: int


@dataclass
class DataReport:
    path: str
    sha256: str
    lines: int = 0
    used: int = 0
    filtered: int = 0  # feedback rows not rated up
    bad: list[dict] = field(default_factory=list)  # {"line", "reason"}
    formats: dict = field(default_factory=dict)
    placeholders: str = "keep"

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "lines": self.lines, "used": self.used,
                "filtered": self.filtered, "bad": len(self.bad), "bad_rows": self.bad[:50],
                "formats": self.formats, "placeholders": self.placeholders}


def apply_placeholders(text: str, mode: str, fill: dict[str, str] | None = None) -> str:
    if mode == "keep" or "{{" not in text:
        return text
    if mode == "strip":
        out = PLACEHOLDER.sub("", text)
        out = re.sub(r"[ \t]{2,}", " ", out)
        return re.sub(r" +([.,;:!?])", r"\1", out)
    fill = fill or {}
    return PLACEHOLDER.sub(lambda m: fill.get(m.group(1), f"your {m.group(1).lower()}"), text)


def _row(obj, mode: str, fill: dict | None) -> tuple[list[dict] | None, str]:
    """(messages, format) or (None, reason)."""
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            return None, "'messages' must be a non-empty list"
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return None, f"message {i + 1}: role must be one of system, user, assistant"
            if not isinstance(m.get("content"), str) or not m["content"].strip():
                return None, f"message {i + 1}: empty or missing content"
            out.append({"role": m["role"], "content": apply_placeholders(m["content"].strip(), mode, fill)})
        if out[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in out):
            return None, "needs a user message and must end with the assistant's reply"
        return out, "messages"
    if "question" in obj and "answer" in obj and "rating" in obj:
        if obj["rating"] not in UP:
            return None, "filtered"
        prompt, reply, fmt = obj.get("question"), obj.get("answer"), "feedback"
    else:
        prompt, reply, fmt = obj.get("prompt"), obj.get("reply"), "prompt/reply"
    if not isinstance(prompt, str) or not prompt.strip():
        return None, "missing or empty prompt"
    if not isinstance(reply, str) or not reply.strip():
        return None, "missing or empty reply"
    return [{"role": "user", "content": apply_placeholders(prompt.strip(), mode, fill)},
            {"role": "assistant", "content": apply_placeholders(reply.strip(), mode, fill)}], fmt


def load_rows(path: Path, placeholders: str = "keep", fill: dict[str, str] | None = None,
              max_chars: int = 20_000) -> tuple[list[Row], DataReport]:
    if placeholders not in ("keep", "strip", "fill"):
        raise DataError(f"unknown placeholder mode {placeholders!r}", "use keep, strip or fill")
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read the training file {path}: {err.strerror or err}") from None
    report = DataReport(str(path), hashlib.sha256(raw).hexdigest(), placeholders=placeholders)
    rows: list[Row] = []
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        report.lines += 1
        if len(line) > max_chars:
            report.bad.append({"line": n, "reason": f"too long ({len(line):,} characters; limit {max_chars:,})"})
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            report.bad.append({"line": n, "reason": f"invalid JSON ({err.msg})"})
            continue
        messages, why = _row(obj, placeholders, fill)
        if messages is None:
            if why == "filtered":
                report.filtered += 1
            else:
                report.bad.append({"line": n, "reason": why})
            continue
        report.formats[why] = report.formats.get(why, 0) + 1
        rows.append(Row(messages, n))
    report.used = len(rows)
    return rows, report


def check_bad_share(report: DataReport, max_bad_fraction: float) -> None:
    considered = report.lines - report.filtered
    if considered == 0 or report.used == 0:
        raise DataError(f"no usable rows in {report.path}",
                        "each line needs {\"messages\": [...]} or {\"prompt\": ..., \"reply\": ...}")
    share = len(report.bad) / considered
    if share > max_bad_fraction:
        first = "; ".join(f"line {b['line']}: {b['reason']}" for b in report.bad[:3])
        raise DataError(f"{len(report.bad)} of {considered} rows in {report.path} are bad ({share:.0%}, "
                        f"limit {max_bad_fraction:.0%}); first: {first}",
                        "fix the file, or raise --max-bad-fraction if skipping them is intended")


def split(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded held-out split: the same file and seed give the same split."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = int(round(len(rows) * fraction)) if len(rows) >= 10 else 0
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def kb_passages(kb) -> list[dict]:
    """The knowledge base's passages as {"source", "section", "text"}: the material of context rows."""
    kb.sync()
    return [{"source": d.metadata["source"], "section": d.metadata.get("section", ""),
             "text": d.page_content.split("\n", 1)[-1]} for d in kb.view().docs]


def context_rows(passages: list[dict], count: int, seed: int, distractors: tuple[int, int] = (1, 3)) -> list[Row]:
    """RAFT-style rows (Zhang et al. 2024): the prompt carries the relevant passage among distractors,
    the reply copies a sentence of it with its [n], so voice training does not unlearn copying.

    `passages`: {"source", "section", "text"} from the knowledge base.
    """
    from bot.grounding import NUMBER
    from bot.prompts import answer_messages
    from bot.retrieval import Passage

    rng = random.Random(seed)
    usable = [p for p in passages if NUMBER.search(p["text"]) and len(p["text"]) > 40]
    rows: list[Row] = []
    attempts = 0
    while len(rows) < count and len(usable) > 1 and attempts < 20 * count:
        attempts += 1
        gold = rng.choice(usable)
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", gold["text"]) if NUMBER.search(s) and 20 < len(s) < 300]
        if not sentences:
            continue
        fact = rng.choice(sentences).strip()
        others = rng.sample([p for p in passages if p is not gold], min(rng.randint(*distractors), len(passages) - 1))
        shown = others + [gold]
        rng.shuffle(shown)
        ps = [Passage(n, p["source"], p.get("section", ""), "", p["text"], 0.5, str(n)) for n, p in enumerate(shown, 1)]
        n_gold = shown.index(gold) + 1
        topic = gold.get("section") or Path(gold["source"]).stem.replace("-", " ")
        asked = re.sub(r"[$€£]?\d[\d,.:]*\d|[$€£]?\d", "what", fact).rstrip(".!? ")
        question = f"About {topic.lower()}: {asked}?"
        messages = answer_messages(question, ps) + [{"role": "assistant", "content": f"{fact} [{n_gold}]"}]
        rows.append(Row(messages, -(len(rows) + 1)))  # negative: not a line of the data file
    return rows
