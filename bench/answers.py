"""Does the default model answer from the passages, in its voice? Measured through the real chain.

    python bench/answers.py [--model DIR --adapters-dir DIR] [--limit N] [--json]

On a temporary copy of knowledge_base/ with the questions of bot/models/qa.jsonl (phrased by hand,
not by the training templates), for no voice and each shipped voice:
- own answer: the model's own words (before the grounding check) hold the gold value ("$4.99");
- final answer: what the customer is shown holds it; fallback: the share replaced by a quote;
- after an edit: every gold value is replaced in its file by a value that appears nowhere in the
  knowledge base (so never in training), a new "Ultra" plan is added, the folder is synced, and
  the same questions are asked again: new value given, old value still given;
- voice: the share of answers carrying the voice's phrases, the other voice's, and with none;
- out-of-scope questions refused; answerable ones wrongly refused;
- conversational turns (the non-inquiry turns of tests/data/turns_heldout.jsonl): the right kind
  of reply (conversation or hand-off), and values in the reply that no passage of the knowledge
  base holds (invented);
- speed: time to first token and decode speed of the answers, peak memory (max RSS).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
NEW_PLAN = ("\n\n## Ultra\n\n- $17.49 per month or $174 per year\n- Everything in Premium\n- Up to 50 homes\n",
            "How much does the Ultra plan cost per month?", "$17.49")
TURNS = REPO / "tests" / "data" / "turns_heldout.jsonl"


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def ask_all(bot, questions: list[dict], adapter: str) -> list[dict]:
    out = []
    for q in questions:
        t = time.perf_counter()
        a = bot.chain.ask(q["question"], adapter=adapter)
        out.append({"q": q, "text": a.text, "generated": a.generated, "kind": a.kind, "refused": a.refused,
                    "timings": a.timings, "s": time.perf_counter() - t})
    return out


def rate(rows: list, hit) -> float | None:
    return round(sum(1 for r in rows if hit(r)) / len(rows), 3) if rows else None


def has(value: str, text: str) -> bool:
    return _norm(value) in _norm(text)


def speed(rows: list[dict]) -> dict:
    firsts = [r["timings"]["first_token_s"] for r in rows if "first_token_s" in r["timings"]]
    rates = [r["timings"]["decode_tokens_per_s"] for r in rows if r["timings"].get("decode_tokens_per_s")]
    return {"first_token_p50_s": round(statistics.median(firsts), 3) if firsts else None,
            "decode_tokens_per_s": round(statistics.median(rates), 1) if rates else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="base model folder (default: the default model)")
    ap.add_argument("--adapters-dir", type=Path, help="more voices (default: the shipped ones only)")
    ap.add_argument("--limit", type=int, default=0, help="only the first N answerable questions (0: all)")
    ap.add_argument("--speed", type=int, default=0, metavar="N",
                    help="only time N answerable questions per adapter (first token, decode speed, memory)")
    ap.add_argument("--quantize", choices=["auto", "none", "int8"], help="model.quantize (default: the setting's)")
    ap.add_argument("--prompt-lookup", type=int, help="model.prompt_lookup (default: the setting's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from bot.app import build_bot, quiet_libraries
    from bot.basemodel import QUESTIONS
    from bot.config import load_settings
    from bot.evaluate import edit_facts, load_questions
    from bot.grounding import unsupported
    from bot.rows import VOICES, voice_shown

    quiet_libraries()
    rows = load_questions(QUESTIONS)
    inscope = [r for r in rows if not r.get("out_of_scope")]
    inscope = inscope[: args.limit] if args.limit else inscope
    outscope = [r for r in rows if r.get("out_of_scope")]
    turns = [json.loads(line) for line in TURNS.read_text(encoding="utf-8").splitlines() if line.strip()]
    talk = [{"question": t["text"], "kind": t["kind"]} for t in turns if t["kind"] != "inquiry"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-answers-"))
    kb = tmp / "kb"
    shutil.copytree(REPO / "knowledge_base", kb)
    overrides = {"model.quantize": args.quantize, "model.prompt_lookup": args.prompt_lookup}
    settings = load_settings({"kb": kb, "data_dir": tmp / "data", "adapters_dir": args.adapters_dir or tmp / "none",
                              "model.name": args.model or None,
                              **{k: v for k, v in overrides.items() if v is not None}}, environ={})
    bot = build_bot(settings)
    bot.kb.sync()
    serving = {k: getattr(settings.model, k) for k in ("quantize", "prompt_lookup", "prefix_cache", "merge_voices")}
    kb_texts = [d.page_content for d in bot.kb.view().docs]
    adapters = bot.adapters.names()
    if args.speed:
        timed = {a: speed([r for r in ask_all(bot, inscope[: args.speed], a) if r["kind"] in ("answer", "fallback")])
                 for a in adapters}
        timed["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        timed["serving"] = serving
        # what the model is shown: retrieval.k passages, or chain.value_passages where a value is asked
        timed["passages_retrieved"] = settings.retrieval.k
        timed["passages_shown_for_a_value"] = settings.chain.value_passages if settings.chain.answer_first else None
        timed["sentences_per_passage"] = settings.chain.passage_sentences
        print(json.dumps(timed))
        return
    t0 = time.perf_counter()
    before = {a: ask_all(bot, inscope, a) for a in adapters}
    refusals = {a: ask_all(bot, outscope, a) for a in adapters}
    chats = {a: ask_all(bot, talk, a) for a in adapters}

    edited = edit_facts(kb, inscope, len(inscope), seed=7)
    pricing = kb / "plans" / "pricing-and-plans.md"
    pricing.write_text(pricing.read_text(encoding="utf-8") + NEW_PLAN[0], encoding="utf-8")
    edited.append({"question": NEW_PLAN[1], "answer": NEW_PLAN[2], "old": "\0", "source": "plans/pricing-and-plans.md"})
    bot.kb.sync()
    after = {a: ask_all(bot, edited, a) for a in adapters}

    result = {"model": bot.model.name, "questions": len(inscope), "edited_questions": len(edited),
              "out_of_scope": len(outscope), "conversational": len(talk), "serving": serving, "modes": {}}
    for a in adapters:
        voice = next((v for v in VOICES if v.name == a), None)
        others = [v for v in VOICES if v.name != a]
        answers = before[a] + after[a]
        answered = [r for r in answers if r["kind"] in ("answer", "fallback")]
        want = lambda r: "handoff" if r["q"]["kind"] == "handoff" else "conversation"  # noqa: E731
        result["modes"][a] = {
            "own_answer": rate(before[a], lambda r: has(r["q"]["answer"], r["generated"])),
            "final_answer": rate(before[a], lambda r: has(r["q"]["answer"], r["text"])),
            "fallback_share": rate(before[a], lambda r: r["kind"] == "fallback"),
            "new_value_after_edit": rate(after[a], lambda r: has(r["q"]["answer"], r["text"])),
            "own_new_value_after_edit": rate(after[a], lambda r: has(r["q"]["answer"], r["generated"])),
            "old_value_after_edit": rate(after[a], lambda r: has(r["q"]["old"], r["text"])),
            "own_voice": rate(answered, lambda r: voice_shown(r["text"], voice)) if voice else None,
            "other_voice": rate(answered, lambda r: any(voice_shown(r["text"], v) for v in others)),
            "out_of_scope_refused": rate(refusals[a], lambda r: r["refused"]),
            "in_scope_refused": rate(before[a], lambda r: r["refused"]),
            "turn_kind_right": rate(chats[a], lambda r: r["kind"] == want(r)),
            "turns_with_invented_values": sum(1 for r in chats[a] if unsupported(r["text"], kb_texts)),
            **speed(answered),
            "p50_s": round(statistics.median(r["s"] for r in answers), 3),
        }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["misses"] = {a: [{"q": r["q"]["question"], "gold": r["q"]["answer"], "said": r["generated"][:160],
                             "shown": r["text"][:160]} for r in before[a] if not has(r["q"]["answer"], r["generated"])]
                        for a in adapters}
    result["misses_after_edit"] = {a: [{"q": r["q"]["question"], "new": r["q"]["answer"], "old": r["q"]["old"],
                                        "shown": r["text"][:200]} for r in after[a]
                                       if not has(r["q"]["answer"], r["text"]) or has(r["q"]["old"], r["text"])]
                                   for a in adapters}
    result["out_of_scope_answered"] = {a: [{"q": r["q"]["question"], "shown": r["text"][:160]}
                                           for r in refusals[a] if not r["refused"]] for a in adapters}
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['model']}: {len(inscope)} questions, {len(edited)} after the edit, {len(outscope)} out of scope, "
          f"{len(talk)} conversational turns; {result['seconds']} s; peak RSS {result['peak_rss_mb']} MB")
    cols = [c for c in next(iter(result["modes"].values()))]
    print("| adapter | " + " | ".join(cols) + " |")
    print("|" + " --- |" * (len(cols) + 1))
    for a, m in result["modes"].items():
        print(f"| {a} | " + " | ".join("-" if m[c] is None else f"{m[c]}" for c in cols) + " |")
    for a, misses in result["misses"].items():
        for m in misses:
            print(f"  miss [{a}] {m['q']} (gold {m['gold']}): {m['said']!r}")
    for a, misses in result["misses_after_edit"].items():
        for m in misses:
            print(f"  after the edit [{a}] {m['q']} (new {m['new']}, old {m['old']}): {m['shown']!r}")
    for a, answered in result["out_of_scope_answered"].items():
        for m in answered:
            print(f"  out of scope, answered [{a}] {m['q']}: {m['shown']!r}")


if __name__ == "__main__":
    main()
