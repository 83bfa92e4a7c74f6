"""Per-request adapter choice: what it costs, and what a voice costs in speed, per serving path.

    python bench/adapters.py [--model PATH --adapters-dir DIR] [--tokens 64] [--reps 5] [--json]
    python bench/adapters.py --default        # SmolLM2-135M-Instruct and its shipped voices

Without --model it builds a small Llama here (hidden 256, 4 layers, seeded) and trains two LoRA
adapters for a few steps, so it runs offline in about a minute. Figures, all in this process:
- choosing an adapter for a request with `AdapterRegistry.using()` (what the chain does), against
  the two alternatives: peft's global `set_adapter`, and loading the adapter from disk per request;
- decode tokens/s and time to the first token of a ~400-token prompt: the bare model (no LoRA
  layers at all, the baseline), then the same model with the adapters loaded, generating with
  none and with a voice, for each serving path (bot/merged.py): peft's unmerged mixed-batch path
  (model.merge_voices false), merged weights per voice (the default), and merged + int8
  (model.quantize int8).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.app import quiet_libraries  # noqa: E402


def build_tiny(root: Path) -> Path:
    from bot.tinymodel import tiny_llama, train_tokenizer

    kb = Path(__file__).resolve().parents[1] / "knowledge_base"
    tok = train_tokenizer([p.read_text(encoding="utf-8") for p in kb.rglob("*.md")], 1024)
    model = tiny_llama(tok, hidden=256, layers=4, heads=8)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    return root / "base"


def train_two(base: Path, root: Path) -> Path:
    from bot.config import ModelSettings
    from bot.model import load_model
    from bot.training import TrainArgs, encode, train_adapter

    for name, reply in (("sunny", "Hey there! Happy to help."), ("formal", "Dear customer, thank you.")):
        loaded = load_model(ModelSettings(name=str(base)))
        rows = [encode(loaded, [{"role": "user", "content": q}, {"role": "assistant", "content": reply}])
                for q in ("hello", "How much is Plus?", "Where do you ship?")]
        train_adapter(loaded, rows, [], root / "adapters" / name, TrainArgs(max_steps=5, lr=1e-2, batch_size=3),
                      {"voice": name})
    return root / "adapters"


def ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 4)


def decode_rate(gen, adapter, tokens: int, reps: int) -> float:
    messages = [{"role": "user", "content": "Do you ship to Canada, and how much does it cost?"}]
    rates = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        n = sum(1 for _ in gen.stream(messages, adapter, max_new_tokens=tokens, min_new_tokens=tokens))
        rates.append(tokens / (time.perf_counter() - t))
        assert n > 0
    return round(statistics.median(rates[1:]), 1)  # the first run warms up


def first_token_s(gen, adapter, reps: int) -> float:
    """Median time to the first token of a prompt the size of a 4-passage question (~400 tokens)."""
    kb = Path(__file__).resolve().parents[1] / "knowledge_base"
    body = "\n\n".join(p.read_text(encoding="utf-8")[:420] for p in sorted(kb.rglob("*.md"))[:4])
    messages = [{"role": "user", "content": f"{body}\n\nCustomer question: Do you ship to Canada?"}]
    times = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        next(iter(gen.stream(messages, adapter, max_new_tokens=1)))
        times.append(time.perf_counter() - t)
    return round(statistics.median(times[1:]), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="base model folder (default: build a small one here)")
    ap.add_argument("--default", action="store_true", help="the default model and its shipped voices")
    ap.add_argument("--adapters-dir", type=Path, help="adapters for --model (default: train two here)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    quiet_libraries()
    import torch

    from bot.adapters import AdapterRegistry
    from bot.config import ModelSettings
    from bot.generation import Generator
    from bot.model import load_model

    root = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    if args.default:
        from bot import basemodel

        args.model = str(basemodel.ensure_default(basemodel.cache_root(None), basemodel.progress_bar()))
        args.adapters_dir = basemodel.VOICES_DIR
    base = Path(args.model) if args.model else build_tiny(root)
    adapters_dir = args.adapters_dir or train_two(base, root)
    # each path measured alone on the same prompts: the prefix cache would serve the repeated ones
    # from memory, and prompt lookup depends on the text (both measured in bench/answers.py)
    ms_settings = ModelSettings(name=str(base), prefix_cache=False, prompt_lookup=0)

    bare = load_model(ms_settings)
    bare_gen = Generator(bare, AdapterRegistry(bare, root / "none", merge=False), ms_settings)
    bare_rate = decode_rate(bare_gen, "none", args.tokens, args.reps)
    bare_first = first_token_s(bare_gen, "none", args.reps)
    del bare, bare_gen

    paths = {"peft unmerged (merge_voices false)": dict(merge=False),
             "merged per voice, fp32 (quantize none)": dict(merge=True),
             "merged + int8 (quantize int8, CPU default)": dict(merge=True, quantize="int8")}
    decode, first, memory = {"bare model (baseline)": bare_rate}, {"bare model (baseline)": bare_first}, {}
    for label, kw in paths.items():
        loaded = load_model(ms_settings)
        reg = AdapterRegistry(loaded, adapters_dir, **kw)
        reg.scan()
        names = [n for n in reg.names() if n != "none"]
        gen = Generator(loaded, reg, ms_settings)
        for adapter in ("none", names[0]):
            decode[f"{label}, {adapter}"] = decode_rate(gen, adapter, args.tokens, args.reps)
            first[f"{label}, {adapter}"] = first_token_s(gen, adapter, args.reps)
        memory[label] = round(reg.router.bytes() / 2**20)

    choose = []
    for i in range(2000):
        t = time.perf_counter()
        with reg.using(names[i % len(names)]):
            pass
        choose.append(time.perf_counter() - t)
    set_global = []
    for i in range(200):
        t = time.perf_counter()
        reg._peft.set_adapter(reg.adapters[names[i % len(names)]].internal)
        set_global.append(time.perf_counter() - t)
    reload = []
    for i in range(10):
        t = time.perf_counter()
        reg._peft.load_adapter(str(adapters_dir / names[0]), adapter_name=f"reload{i}", is_trainable=False)
        reload.append(time.perf_counter() - t)
        reg._peft.delete_adapter(f"reload{i}")

    voice = f"merged + int8 (quantize int8, CPU default), {names[0]}"
    result = {
        "model": str(base) if args.model else "tiny Llama built here (hidden 256, 4 layers)",
        "params_m": round(sum(p.numel() for p in loaded.model.parameters()) / 1e6, 2),
        "adapters": names,
        "torch_threads": torch.get_num_threads(),
        "choose_ms": {"using (per request, this project)": ms(choose), "set_adapter (global)": ms(set_global),
                      "load_adapter from disk": ms(reload)},
        "decode_tokens_per_s": decode,
        "first_token_s": first,
        "served_copies_mb": memory,
        "adapter_vs_bare": round(decode[voice] / bare_rate, 3),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"model: {result['model']} ({result['params_m']}M parameters), {result['torch_threads']} threads")
    for k, v in result["choose_ms"].items():
        print(f"  choose adapter, {k:<32} {v:>9.4f} ms (median)")
    for k, v in decode.items():
        print(f"  {k:<48} decode {v:>7.1f} tokens/s   first token {first[k]:.3f} s")
    for k, v in memory.items():
        print(f"  served copies, {k:<34} {v:>6} MB")
    print(f"  voice (merged + int8) / bare decode speed: {result['adapter_vs_bare']:.2f}x")


if __name__ == "__main__":
    main()
