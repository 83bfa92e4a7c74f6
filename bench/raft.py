"""Does voice training unlearn copying facts from passages, and does `--with-context` prevent it?

    python bench/raft.py [--voice-data ../shared/eval/voice/bitext-voice.jsonl] [--base-steps 1500] [--json]

1. A small Llama (hidden 192, 3 layers) is trained here, in full, to answer from passages: the
   RAFT-style rows of `bot.trainingdata.context_rows` over the shipped knowledge base (a relevant
   passage plus a distractor, in the chain's own prompt; the reply copies the fact and its [n]).
2. Two voice adapters are trained on it from the same 400 Bitext replies with `train_voice`:
   voice only, and voice + `--with-context`.
3. On 100 held-out passage questions (other question / distractor combinations over the same
   pages, so the values are familiar ones), each of base, voice-only and voice+context answers;
   "exact copy" = every value (number, price, time) of the gold fact appears in the answer.
   The voice itself is measured on 100 held-out Bitext prompts (voice phrase rate, as in voice.py).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import quiet_libraries  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VOICE = REPO.parent / "shared" / "eval" / "voice" / "bitext-voice.jsonl"


def pretrain(loaded, rows, steps: int, lr: float, on_step=None) -> float:
    """Full-parameter training of the base on copy rows (the demo model's recipe, in miniature)."""
    import torch

    from bot.training import _loss, batch_at

    model = loaded.model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    t0 = time.perf_counter()
    for step in range(steps):
        model.train()
        loss = _loss(model, batch_at(rows, step, 8, 0), loaded.tokenizer.pad_token_id, loaded.device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if on_step and step % 100 == 0:
            on_step(step, loss.item())
    model.eval()
    return time.perf_counter() - t0


def copy_rate(gen, adapter, rows) -> float:
    from bot.grounding import NUMBER, _number_key

    hits = 0
    for r in rows:
        fact = r.messages[-1]["content"]
        want = {_number_key(n) for n in NUMBER.findall(fact.rsplit("[", 1)[0])}
        reply = "".join(gen.stream(r.messages[:-1], adapter, max_new_tokens=80))
        got = {_number_key(n) for n in NUMBER.findall(reply)}
        hits += want <= got
    return round(hits / len(rows), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voice-data", type=Path, default=DEFAULT_VOICE)
    ap.add_argument("--base-rows", type=int, default=3000)
    ap.add_argument("--base-steps", type=int, default=1500)
    ap.add_argument("--voice-rows", type=int, default=400)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    quiet_libraries()
    from bot.adapters import AdapterRegistry
    from bot.app import build_knowledge_base
    from bot.config import Settings
    from bot.generation import Generator
    from bot.model import load_model
    from bot.tinymodel import tiny_llama, train_tokenizer
    from bot.training import encode, train_voice
    from bot.trainingdata import apply_placeholders, context_rows, kb_passages
    from voice import trigrams, voice_phrases

    root = Path(tempfile.mkdtemp(prefix="bench-raft-"))
    settings = Settings(kb=REPO / "knowledge_base", data_dir=root / "data", adapters_dir=root / "adapters")
    docs = kb_passages(build_knowledge_base(settings))
    voice = [json.loads(x) for x in args.voice_data.read_text(encoding="utf-8").splitlines() if x.strip()]
    random.Random(0).shuffle(voice)
    voice_train, voice_test = voice[: args.voice_rows], voice[args.voice_rows: args.voice_rows + 100]

    texts = [d["text"] for d in docs] + [apply_placeholders(v["reply"], "fill") for v in voice_train]
    tok = train_tokenizer(texts, 1024)
    tiny_llama(tok, hidden=192, layers=3, heads=6, context=1024).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    settings.model.name = str(root / "base")
    base = load_model(settings.model)
    train_rows = [encode(base, r.messages) for r in context_rows(docs, args.base_rows, seed=1, distractors=(1, 1))]
    log = (lambda step, loss: print(f"  base step {step}: loss {loss:.3f}", file=sys.stderr))
    base_seconds = pretrain(base, train_rows, args.base_steps, 3e-3, log)
    base.model.save_pretrained(root / "base")
    test_rows = context_rows(docs, 100, seed=999, distractors=(1, 1))

    data = root / "voice.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": v["prompt"], "reply": v["reply"]}) for v in voice_train) + "\n")
    t = settings.train
    t.epochs, t.lr, t.batch_size, t.placeholders, t.max_tokens, t.eval_fraction = 1.0, 2e-3, 8, "fill", 1024, 0.05
    train_voice(settings, data, "voice-only")
    t.with_context, t.context_fraction = True, 0.5
    train_voice(settings, data, "voice-context")

    loaded = load_model(settings.model)
    reg = AdapterRegistry(loaded, settings.adapters_dir)
    reg.scan()
    gen = Generator(loaded, reg, settings.model)
    phrases = set(voice_phrases([apply_placeholders(v["reply"], "fill") for v in voice_train]))
    modes = {}
    for adapter in ("none", "voice-only", "voice-context"):
        replies = ["".join(gen.stream([{"role": "user", "content": apply_placeholders(v["prompt"], "fill")}], adapter,
                                      max_new_tokens=60)) for v in voice_test]
        modes[adapter] = {"exact_copy": copy_rate(gen, adapter, test_rows),
                          "voice_phrase_rate": round(sum(bool(trigrams(r) & phrases) for r in replies) / len(replies), 3)}
    result = {"base_steps": args.base_steps, "base_train_seconds": round(base_seconds, 1),
              "base_params_m": round(sum(p.numel() for p in loaded.model.parameters()) / 1e6, 2),
              "voice_rows": len(voice_train), "test_questions": len(test_rows), "modes": modes}
    if args.json:
        print(json.dumps(result))
        return
    print(f"base: {result['base_params_m']}M parameters, {args.base_steps} steps in {result['base_train_seconds']} s")
    print("| model | exact fact copy (100 passage questions) | voice phrase rate (100 Bitext prompts) |")
    print("| --- | --- | --- |")
    for name, m in modes.items():
        print(f"| {'base' if name == 'none' else name} | {m['exact_copy']:.2f} | {m['voice_phrase_rate']:.2f} |")


if __name__ == "__main__":
    main()
