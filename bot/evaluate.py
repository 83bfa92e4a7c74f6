"""`supportbot eval`: the same questions through four modes, measured side by side.

- base:    the model alone (no passages, no adapter)
- rag:     retrieval only: the chain with no adapter (passages, threshold refusal, grounding check)
- adapter: the voice alone, no passages
- hybrid:  the chain with the adapter

Questions are JSONL rows {"question", "answer" (gold value or evidence span), "source" (gold
file), optionally "also_stated_in" (other files that state the same fact)}, plus rows with
"out_of_scope": true that the knowledge base does not answer. Staleness is measured on a temporary
copy of the knowledge base in which a few gold values are edited, in every file that states them.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Callable

from bot.errors import SupportbotError

MODES = ("base", "rag", "adapter", "hybrid")
_WORDS = re.compile(r"\w+")
_DECLINES = re.compile(r"couldn't find|could not find|won't guess|don't know|do not know|not sure|"
                       r"cannot answer|can't answer|put you in touch with a person", re.I)


def norm(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def contains(answer: str, gold: str) -> bool:
    return bool(gold.strip()) and norm(gold) in norm(answer)


def token_f1(answer: str, gold: str) -> float:
    a, g = _WORDS.findall(answer.lower()), _WORDS.findall(gold.lower())
    common = sum((Counter(a) & Counter(g)).values())
    if not a or not g or not common:
        return 0.0
    p, r = common / len(a), common / len(g)
    return 2 * p * r / (p + r)


def declined(text: str) -> bool:
    return bool(_DECLINES.search(text))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 4)


def load_questions(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise SupportbotError(f"{path}, line {i}: not JSON", "one object per line: {question, answer, source}") from None
        if not isinstance(row, dict) or not str(row.get("question", "")).strip():
            raise SupportbotError(f"{path}, line {i}: no question", "one object per line: {question, answer, source}")
        rows.append(row)
    return rows


def _markers(card: dict) -> list[str]:
    return [m for m in card.get("markers") or [card.get("opener", ""), card.get("closer", "")] if m]


def _files(sources: list[dict]) -> list[str]:
    """The files of these answer sources: a passage filed twice counts for each (its twins are in also_in)."""
    return [f for s in sources for f in (s["source"], *s.get("also_in", ()))]


def _ask(bot, mode: str, question: str, adapter: str) -> dict:
    """One answer in one mode: text, refused, cited sources, retrieved sources, values checked, timings."""
    from bot.grounding import unsupported
    from bot.prompts import answer_messages

    t0 = time.perf_counter()
    if mode in ("rag", "hybrid"):
        first = None
        for event in bot.chain.stream(question, [], adapter if mode == "hybrid" else "none"):
            if event["type"] == "token" and first is None:
                first = time.perf_counter() - t0
            if event["type"] == "answer":
                a = event["answer"]
        total = time.perf_counter() - t0
        cited = [s for s in a.sources if s["cited"]]
        return {"text": a.text, "refused": a.refused or declined(a.text), "kind": a.kind,
                "cited_sources": _files(cited), "retrieved": _files(a.sources),
                "ungrounded": list(a.flagged) if a.kind != "fallback" else [], "changed": a.kind == "fallback",
                "first_s": first if first is not None else total, "total_s": total}
    first, pieces = None, []
    for piece in bot.chain.generator.stream(answer_messages(question, []), adapter if mode == "adapter" else "none"):
        first = first if first is not None else time.perf_counter() - t0
        pieces.append(piece)
    total = time.perf_counter() - t0
    text = "".join(pieces).strip()
    return {"text": text, "refused": declined(text), "kind": "answer", "cited_sources": [], "retrieved": [],
            "ungrounded": unsupported(text, []), "changed": False, "first_s": first or total, "total_s": total}


def _summary(rows: list[dict], markers: list[str], stale: list[dict]) -> dict:
    inscope = [r for r in rows if not r["q"].get("out_of_scope")]
    outscope = [r for r in rows if r["q"].get("out_of_scope")]

    def share(items, test):
        return round(sum(1 for r in items if test(r)) / len(items), 3) if items else None

    return {
        "questions": len(inscope), "out_of_scope_questions": len(outscope),
        "containment": share(inscope, lambda r: contains(r["a"]["text"], r["q"].get("answer", ""))),
        "token_f1": round(sum(token_f1(r["a"]["text"], r["q"].get("answer", "")) for r in inscope) / len(inscope), 3)
        if inscope else None,
        "grounded": share(inscope, lambda r: not r["a"]["ungrounded"]),  # of the final answer, after any fix
        "grounding_changed": share(inscope, lambda r: r["a"]["changed"]),
        "citation_accuracy": share(inscope, lambda r: r["q"].get("source", "") in r["a"]["cited_sources"]),
        "retrieval_hit": share(inscope, lambda r: r["q"].get("source", "") in r["a"]["retrieved"]),
        "voice": share(inscope, lambda r: any(m.lower() in r["a"]["text"].lower() for m in markers)) if markers else None,
        "refused_out_of_scope": share(outscope, lambda r: r["a"]["refused"]),
        "refused_in_scope": share(inscope, lambda r: r["a"]["refused"]),
        "stale_new_value": share(stale, lambda r: contains(r["a"]["text"], r["q"]["answer"])),
        "stale_old_value": share(stale, lambda r: contains(r["a"]["text"], r["q"]["old"])),
        "first_token_p50_s": percentile([r["a"]["first_s"] for r in rows], 0.5),
        "first_token_p95_s": percentile([r["a"]["first_s"] for r in rows], 0.95),
        "total_p50_s": percentile([r["a"]["total_s"] for r in rows], 0.5),
        "total_p95_s": percentile([r["a"]["total_s"] for r in rows], 0.95),
    }


def _value_at(value: str) -> re.Pattern:
    """`value` standing alone: "$25" but not the start of "$250" or "$25.50"."""
    return re.compile(rf"(?<![\w$]){re.escape(value)}(?![\w]|[.,]\d)")


def edit_facts(kb: Path, questions: list[dict], count: int, seed: int) -> list[dict]:
    """Replace the gold value of up to `count` questions, in their source file and the files listed
    in "also_stated_in" (a team changing a fact changes it wherever the help center states it;
    editing one page would leave it contradicting itself), by a value found nowhere in the
    knowledge base; returns those questions with {"answer": new, "old": old}."""
    from bot.rows import redraw_digits

    rng = random.Random(seed)
    corpus = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in kb.rglob("*") if p.is_file())
    edited = []
    for q in questions:
        gold, path = q.get("answer", ""), kb / q.get("source", "")
        if len(edited) >= count or q.get("out_of_scope") or not re.search(r"\d", gold) or len(gold) > 40 \
                or not path.is_file() or gold not in path.read_text(encoding="utf-8", errors="replace"):
            continue
        new = next((v for v in (redraw_digits(gold, rng) for _ in range(200)) if v != gold and v not in corpus), None)
        if new is None:
            continue
        at = _value_at(gold)
        if not at.search(path.read_text(encoding="utf-8")):  # only inside a longer value ("4.99" of "$4.99")
            continue
        for f in [path, *(kb / rel for rel in q.get("also_stated_in", ()))]:
            f.write_text(at.sub(new, f.read_text(encoding="utf-8")), encoding="utf-8")
        corpus += "\n" + new
        edited.append({**q, "answer": new, "old": gold})
    return edited


def run_eval(settings, questions: list[dict], adapter: str | None = None, limit: int = 0, stale_edits: int = 5,
             embeddings=None, loaded=None, on_progress: Callable[[int, int], None] | None = None) -> dict:
    """All four modes over `questions` on a temporary copy of settings.kb. Returns the report."""
    from bot.app import build_bot

    if limit:
        inscope = [q for q in questions if not q.get("out_of_scope")][:limit]
        questions = inscope + [q for q in questions if q.get("out_of_scope")][: max(1, limit // 4)]
    tmp = Path(tempfile.mkdtemp(prefix="supportbot-eval-"))
    bot = None
    try:
        shutil.copytree(settings.kb, tmp / "kb", symlinks=False, ignore=shutil.ignore_patterns(".*"))
        local = replace(settings, kb=tmp / "kb", data_dir=tmp / "data")
        bot = build_bot(local.validate(), embeddings, loaded=loaded)
        bot.kb.sync()
        names = bot.adapters.names()
        adapter = adapter or (names[1] if len(names) > 1 else "none")
        bot.adapters.check(adapter)
        markers = _markers(bot.adapters.card(adapter)) if adapter != "none" else []
        total = len(questions) * len(MODES)
        edited: list[dict] = []
        results = {m: [] for m in MODES}
        done = 0
        for mode in MODES:
            for q in questions:
                results[mode].append({"q": q, "a": _ask(bot, mode, q["question"], adapter)})
                done += 1
                if on_progress:
                    on_progress(done, total + len(MODES) * stale_edits)
        edited = edit_facts(tmp / "kb", questions, stale_edits, seed=11)
        bot.kb.sync()
        stale = {m: [{"q": q, "a": _ask(bot, m, q["question"], adapter)} for q in edited] for m in MODES}
        if on_progress:
            on_progress(total + len(MODES) * stale_edits, total + len(MODES) * stale_edits)
        return {"adapter": adapter, "model": bot.model.name, "kb": str(settings.kb), "stale_edits": len(edited),
                "modes": {m: _summary(results[m], markers, stale[m]) for m in MODES},
                "examples": {m: [{"question": r["q"]["question"], "gold": r["q"].get("answer", ""),
                                  "answer": r["a"]["text"]} for r in results[m][:3]] for m in MODES}}
    finally:
        if bot is not None:
            bot.kb.close()  # its folder journal watches the copy removed next
        shutil.rmtree(tmp, ignore_errors=True)


COLUMNS = [("containment", "contains gold"), ("token_f1", "token F1"), ("grounded", "grounded"),
           ("grounding_changed", "grounding fixed"), ("citation_accuracy", "cites gold source"),
           ("retrieval_hit", "retrieval hit@k"), ("voice", "voice"), ("refused_out_of_scope", "declines out-of-scope"),
           ("refused_in_scope", "declines answerable"), ("stale_new_value", "new value after edit"),
           ("first_token_p50_s", "first token p50 s"), ("total_p95_s", "total p95 s")]


def markdown_table(report: dict) -> str:
    head = "| metric | " + " | ".join(MODES) + " |\n|" + " --- |" * (len(MODES) + 1)
    lines = [head]
    for key, label in COLUMNS:
        cells = [report["modes"][m].get(key) for m in MODES]
        lines.append(f"| {label} | " + " | ".join("-" if v is None else f"{v:g}" for v in cells) + " |")
    return "\n".join(lines)


def chart(report: dict, path: Path) -> Path:
    """A grouped bar chart of the share metrics per mode (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, label) for k, label in COLUMNS if not k.endswith("_s")]
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(MODES)
    for i, mode in enumerate(MODES):
        values = [report["modes"][mode].get(k) or 0 for k, _ in keys]
        ax.bar([x + i * width for x in range(len(keys))], values, width, label=mode)
    ax.set_xticks([x + width * (len(MODES) - 1) / 2 for x in range(len(keys))])
    ax.set_xticklabels([label for _, label in keys], rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"supportbot eval: {Path(report['kb']).name}, adapter {report['adapter']}")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, out: Path) -> dict:
    """eval.json, eval.md (the table) and eval.png (the chart) in `out`; their paths go into the report."""
    out.mkdir(parents=True, exist_ok=True)
    report["files"] = {"json": str(out / "eval.json"), "table": str(out / "eval.md"), "chart": str(out / "eval.png")}
    (out / "eval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "eval.md").write_text(markdown_table(report) + "\n", encoding="utf-8")
    chart(report, out / "eval.png")
    return report["files"]
