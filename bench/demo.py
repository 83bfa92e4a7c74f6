"""Does the embedded demo model do its job? Measured through the real chain on the shipped KB.

    python bench/demo.py [--model DIR --adapters-dir DIR] [--json]

On a temporary copy of knowledge_base/ and the questions in bot/demo/qa.jsonl (phrased by hand,
not by the training templates), for the base model and each voice:
- exact copy: the gold value (e.g. "$4.99") appears verbatim in the answer;
- after an edit: every gold value is replaced in its file by a fresh one that appears nowhere in
  the knowledge base (so also never in training), a new "Ultra" plan is added, the folder is
  synced, and the same questions are asked again: new value given, old value still given (a
  question whose value an earlier edit already replaced in the same file is not asked twice);
- voice: the share of answers carrying the voice's markers, the other voice's, and with none;
- out-of-scope questions refused by the chain (below the relevance threshold).
It also reports how many answers the grounding check replaced by a quote (kind "fallback"), so
the model's own copying can be told from the chain's.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
NEW_PLAN = ("\n\n## Ultra\n\n- $17.49 per month or $174 per year\n- Everything in Premium\n- Up to 50 homes\n",
            "How much does the Ultra plan cost per month?", "$17.49")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def ask_all(bot, questions: list[dict], adapter: str) -> list[dict]:
    out = []
    for q in questions:
        t = time.perf_counter()
        a = bot.chain.ask(q["question"], adapter=adapter)
        out.append({"q": q, "text": a.text, "kind": a.kind, "refused": a.refused, "s": time.perf_counter() - t})
    return out


def rate(rows: list, hit) -> float:
    return round(sum(1 for r in rows if hit(r)) / max(1, len(rows)), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="base model folder (default: the embedded demo)")
    ap.add_argument("--adapters-dir", type=Path, help="voices (default: the demo's own)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from bot.app import build_bot, quiet_libraries
    from bot.config import Settings
    from bot.demo import QUESTIONS, VOICES, voice_shown
    from bot.evaluate import edit_facts, load_questions

    quiet_libraries()
    rows = load_questions(QUESTIONS)
    inscope = [r for r in rows if not r.get("out_of_scope")]
    outscope = [r for r in rows if r.get("out_of_scope")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    kb = tmp / "kb"
    shutil.copytree(REPO / "knowledge_base", kb)
    settings = Settings(kb=kb, data_dir=tmp / "data", adapters_dir=args.adapters_dir or tmp / "no-adapters")
    settings.model.name = args.model
    bot = build_bot(settings)
    bot.kb.sync()
    adapters = bot.adapters.names()
    t0 = time.perf_counter()
    before = {a: ask_all(bot, inscope, a) for a in adapters}
    refusals = {a: ask_all(bot, outscope, a) for a in adapters}

    edited = edit_facts(kb, inscope, len(inscope), seed=7)
    pricing = kb / "plans" / "pricing-and-plans.md"
    pricing.write_text(pricing.read_text(encoding="utf-8") + NEW_PLAN[0], encoding="utf-8")
    edited.append({"question": NEW_PLAN[1], "answer": NEW_PLAN[2], "old": "\0", "source": "plans/pricing-and-plans.md"})
    bot.kb.sync()
    after = {a: ask_all(bot, edited, a) for a in adapters}

    result = {"model": bot.model.name, "questions": len(inscope), "edited_questions": len(edited),
              "out_of_scope": len(outscope), "modes": {}}
    for a in adapters:
        voice = next((v for v in VOICES if v.name == a), None)
        others = [v for v in VOICES if v.name != a]
        answers = before[a] + after[a]
        result["modes"][a] = {
            "exact_copy": rate(before[a], lambda r: _norm(r["q"]["answer"]) in _norm(r["text"])),
            "exact_copy_model_only": rate(before[a], lambda r: r["kind"] == "answer"
                                          and _norm(r["q"]["answer"]) in _norm(r["text"])),
            "fallback_share": rate(before[a], lambda r: r["kind"] == "fallback"),
            "new_value_after_edit": rate(after[a], lambda r: _norm(r["q"]["answer"]) in _norm(r["text"])),
            "old_value_after_edit": rate(after[a], lambda r: _norm(r["q"]["old"]) in _norm(r["text"])),
            "fallback_share_after_edit": rate(after[a], lambda r: r["kind"] == "fallback"),
            "own_voice": rate(answers, lambda r: voice_shown(r["text"], voice)) if voice else None,
            "own_voice_model_only": rate([r for r in answers if r["kind"] == "answer"],
                                         lambda r: voice_shown(r["text"], voice)) if voice else None,
            "other_voice": rate(answers, lambda r: any(voice_shown(r["text"], v) for v in others)),
            "out_of_scope_refused": rate(refusals[a], lambda r: r["refused"]),
            "in_scope_refused": rate(before[a], lambda r: r["refused"]),
            "p50_s": round(sorted(r["s"] for r in answers)[len(answers) // 2], 3),
        }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']}: {len(inscope)} questions, {len(edited)} after the edit, {len(outscope)} out of scope, "
          f"{result['seconds']} s")
    cols = ["exact_copy", "exact_copy_model_only", "fallback_share", "new_value_after_edit", "old_value_after_edit",
            "own_voice", "own_voice_model_only", "other_voice", "out_of_scope_refused", "in_scope_refused", "p50_s"]
    print("| adapter | " + " | ".join(cols) + " |")
    print("|" + " --- |" * (len(cols) + 1))
    for a, m in result["modes"].items():
        print(f"| {a} | " + " | ".join("-" if m[c] is None else f"{m[c]}" for c in cols) + " |")


if __name__ == "__main__":
    main()
