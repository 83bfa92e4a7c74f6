"""Does a trained voice adapter sound like the replies it learned from? Measured on held-out prompts.

    python bench/voice.py [--data ../shared/eval/voice/bitext-voice.jsonl] [--train 600] [--test 100]
                          [--model PATH] [--epochs 3] [--json]

Data: 1,000 public customer-support replies in one consistent voice (Bitext, CDLA-Sharing-1.0;
read from ../shared, never copied here). Rows are split with a seed into training rows and
held-out prompts. `supportbot train`'s own code fits the adapter; then, for each held-out prompt,
the base model and the adapter reply, and both are compared with the reference reply:
- similarity: cosine between MiniLM embeddings of the reply and the reference (mean);
- voice phrases: the share of replies that use at least one of the voice's characteristic
  phrases (word 3-grams found in >= 8% of the training replies, e.g. "i'm here to");
and the training time on this machine. Without --model it builds a small Llama here (vocabulary
fitted to the training text, random weights): the base then says nothing useful, which is the
honest baseline for "what does the adapter alone bring"; pass --model for a real base.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import quiet_libraries  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "eval" / "voice" / "bitext-voice.jsonl"


def trigrams(text: str) -> set[str]:
    words = re.findall(r"[a-z']+", text.lower())
    return {" ".join(words[i:i + 3]) for i in range(len(words) - 2)}


def voice_phrases(replies: list[str], share: float = 0.08) -> list[str]:
    counts = Counter(g for r in replies for g in trigrams(r))
    return sorted(g for g, n in counts.items() if n >= share * len(replies))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--test", type=int, default=100)
    ap.add_argument("--model", help="base model folder (default: a small Llama built here)")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found (the shared eval data sits beside the repository)")
    quiet_libraries()
    import numpy as np

    from bot.adapters import AdapterRegistry
    from bot.config import Settings
    from bot.embeddings import LocalEmbeddings
    from bot.generation import Generator
    from bot.model import load_model
    from bot.tinymodel import tiny_llama, train_tokenizer
    from bot.training import train_voice
    from bot.trainingdata import apply_placeholders

    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(0).shuffle(rows)
    train_rows, test_rows = rows[: args.train], rows[args.train: args.train + args.test]
    root = Path(tempfile.mkdtemp(prefix="bench-voice-"))
    data = root / "train.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": r["prompt"], "reply": r["reply"]}) for r in train_rows) + "\n")

    base = args.model
    if not base:
        texts = [apply_placeholders(r["prompt"] + "\n" + r["reply"], "fill") for r in train_rows]
        tok = train_tokenizer(texts, 2048)
        tiny_llama(tok, hidden=256, layers=4, heads=8).save_pretrained(root / "base")
        tok.save_pretrained(root / "base")
        base = str(root / "base")

    settings = Settings(kb=Path(__file__).resolve().parents[1] / "knowledge_base", data_dir=root / "data",
                        adapters_dir=root / "adapters")
    settings.model.name = base
    t = settings.train
    t.epochs, t.lr, t.batch_size, t.rank, t.alpha, t.placeholders, t.max_tokens = args.epochs, 2e-3, 8, 16, 32, "fill", 384
    t.eval_fraction = 0.05
    summary = train_voice(settings.validate(), data, "bitext", card={"voice": "Bitext virtual assistant"})

    loaded = load_model(settings.model)
    reg = AdapterRegistry(loaded, settings.adapters_dir)
    reg.scan()
    gen = Generator(loaded, reg, settings.model)
    phrases = voice_phrases([apply_placeholders(r["reply"], "fill") for r in train_rows])
    emb = LocalEmbeddings()
    refs = np.array(emb.embed_documents([apply_placeholders(r["reply"], "fill") for r in test_rows]))
    out = {}
    for adapter in ("none", "bitext"):
        t0 = time.perf_counter()
        replies = ["".join(gen.stream([{"role": "user", "content": apply_placeholders(r["prompt"], "fill")}], adapter,
                                      max_new_tokens=args.max_new_tokens)).strip() for r in test_rows]
        seconds = time.perf_counter() - t0
        vecs = np.array(emb.embed_documents([r or "(empty)" for r in replies]))
        sims = (vecs * refs).sum(axis=1)
        out[adapter] = {"similarity_mean": round(float(sims.mean()), 3),
                        "similarity_p50": round(float(statistics.median(sims.tolist())), 3),
                        "voice_phrase_rate": round(sum(bool(trigrams(r) & set(phrases)) for r in replies) / len(replies), 3),
                        "generate_seconds": round(seconds, 1), "example": replies[0][:300]}
    result = {"data": str(args.data), "train_rows": summary["data"]["used"], "test_prompts": len(test_rows),
              "base": args.model or "small Llama built here (random weights)", "steps": summary["steps"],
              "train_seconds": summary["seconds"], "eval_loss_before": summary["eval_loss_before"],
              "eval_loss_after": summary["eval_loss"], "voice_phrases": len(phrases), "modes": out,
              "example_prompt": test_rows[0]["prompt"], "example_reference": test_rows[0]["reply"][:300]}
    if args.json:
        print(json.dumps(result))
        return
    print(f"trained on {result['train_rows']} rows in {result['train_seconds']} s ({result['steps']} steps); "
          f"eval loss {result['eval_loss_before']:.3f} -> {result['eval_loss_after']:.3f}")
    print(f"{len(test_rows)} held-out prompts; {len(phrases)} voice phrases")
    print("| replies from | similarity to reference (mean) | voice phrase rate |")
    print("| --- | --- | --- |")
    for name, m in out.items():
        print(f"| {'base model' if name == 'none' else 'adapter'} | {m['similarity_mean']:.3f} | {m['voice_phrase_rate']:.2f} |")
    print(f"\nprompt: {result['example_prompt']}\nadapter: {out['bitext']['example']}")


if __name__ == "__main__":
    main()
