"""`supportbot demo build`: the demo base model and its two voices, from a seed, on a CPU.

1. A byte-level BPE tokenizer (digits split) fitted to the knowledge base and the fixed texts.
2. A small Llama trained in full on RAFT-style rows (bot/demo/data.py): copy the fact sentence of
   the relevant passage with its [n]. The loss is taken at answer tokens only, and the output
   layer is computed only there (most of a row is prompt: this makes a step several times cheaper).
3. One LoRA per voice, trained on the same kind of rows framed by the voice's opener and closer,
   so a voice never costs the copying.

Weights are stored as fp16 safetensors (a few MB) and loaded as fp32. Same seed, same weights.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from bot import demo
from bot.config import Settings, TrainArgs

log = logging.getLogger(__name__)


@dataclass
class DemoRecipe:
    """Sizes and steps of one build; `quick()` is the miniature the tests build in seconds."""

    vocab: int = 1024
    hidden: int = 192
    layers: int = 3
    heads: int = 6
    context: int = 1024
    base_rows: int = 12000
    base_steps: int = 1500
    batch: int = 16
    lr: float = 3e-3
    voice_rows: int = 1200
    voice_steps: int = 150
    voice_lr: float = 2e-3
    rank: int = 8
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoRecipe":
        return cls(vocab=400, hidden=32, layers=1, heads=2, context=1024, base_rows=200, base_steps=30, batch=8,
                   voice_rows=60, voice_steps=10, rank=4)


def answer_loss(model, rows, pad: int, device: str):
    """Cross-entropy at the answer tokens only, with the output layer applied only there."""
    import torch.nn.functional as F

    from bot.training import _batches

    ids, labels, mask = (t.to(device) for t in _batches(rows, pad))
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    chosen = target != -100
    return F.cross_entropy(model.lm_head(hidden[chosen]), target[chosen])


def pretrain(loaded, rows, recipe: DemoRecipe, on_step: Callable[[int, int, float], None] | None = None) -> list[float]:
    import torch

    from bot.training import batch_at

    model, steps = loaded.model, recipe.base_steps
    torch.manual_seed(recipe.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    warm = max(1, steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))))
    losses = []
    for step in range(steps):
        model.train()
        loss = answer_loss(model, batch_at(rows, step, recipe.batch, recipe.seed), loaded.tokenizer.pad_token_id,
                           loaded.device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step:
            on_step(step + 1, steps, loss.item())
    model.eval()
    return losses


def _encode_all(loaded, conversations: list[list[dict]]) -> list:
    from bot.training import encode

    rows = [encode(loaded, m) for m in conversations]
    return [r for r in rows if len(r.input_ids) <= loaded.context]


def build(out_dir: Path | None = None, recipe: DemoRecipe | None = None, kb: Path | None = None,
          on_step: Callable[[str, int, int, float], None] | None = None) -> dict:
    """Build the base model and the voices into `out_dir` (default: the package's bot/demo/)."""
    import torch

    from bot.app import build_knowledge_base
    from bot.demo.data import answer_rows, conversation_rows, redraw_digits
    from bot.model import LoadedModel, load_model
    from bot.prompts import ANSWER_INSTRUCTIONS, CONVERSATION_INSTRUCTIONS
    from bot.tinymodel import tiny_llama, train_tokenizer
    from bot.training import train_adapter
    from bot.trainingdata import kb_passages

    recipe = recipe or DemoRecipe()
    out_dir = Path(out_dir or demo.HERE)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="supportbot-demo-") as tmp:
        settings = Settings(kb=Path(kb or Path.cwd() / "knowledge_base"), data_dir=Path(tmp) / "data")
        passages = kb_passages(build_knowledge_base(settings))
    if not passages:
        raise ValueError(f"no passages in {settings.kb}: the demo is trained on a knowledge base's text")

    rng = random.Random(recipe.seed)
    texts = [redraw_digits(p["text"], rng) for p in passages for _ in range(3)]
    texts += [ANSWER_INSTRUCTIONS, CONVERSATION_INSTRUCTIONS] * 20
    texts += [m["content"] for conv in conversation_rows(50, recipe.seed) for m in conv]
    for v in demo.VOICES:
        texts += list(v.markers) * 10
    tok = train_tokenizer(texts, recipe.vocab)
    model = tiny_llama(tok, recipe.hidden, recipe.layers, recipe.heads, recipe.context, recipe.seed)
    loaded = LoadedModel(model, tok, demo.MODEL_NAME, "cpu", recipe.context)
    convs = answer_rows(passages, recipe.base_rows, recipe.seed) + conversation_rows(recipe.base_rows // 10, recipe.seed)
    rows = _encode_all(loaded, convs)
    log.info("demo base: %.2fM parameters, %d rows", sum(p.numel() for p in model.parameters()) / 1e6, len(rows))
    t_base = time.perf_counter()
    losses = pretrain(loaded, rows, recipe, (lambda s, n, loss: on_step("base", s, n, loss)) if on_step else None)
    base_seconds = time.perf_counter() - t_base

    model_dir = out_dir / demo.MODEL_NAME
    staging = out_dir / f".{demo.MODEL_NAME}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.to(torch.float16).save_pretrained(staging, safe_serialization=True)
    tok.save_pretrained(staging)
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)

    voices = {}
    adapters_dir = out_dir / "adapters"
    adapters_dir.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(demo.VOICES):
        base = load_model(settings.model, name=str(model_dir))
        base = LoadedModel(base.model, base.tokenizer, demo.MODEL_NAME, base.device, base.context)
        seed = recipe.seed + 101 * (i + 1)
        vrows = _encode_all(base, answer_rows(passages, recipe.voice_rows, seed, voice=v)
                            + conversation_rows(recipe.voice_rows // 10, seed, voice=v))
        args = TrainArgs(max_steps=recipe.voice_steps, lr=recipe.voice_lr, batch_size=8, rank=recipe.rank,
                         alpha=2 * recipe.rank, dropout=0.0, eval_fraction=0.0, seed=seed, checkpoint_every=0)
        card = {"name": v.name, "voice": v.description, "opener": v.openers[0], "closer": v.closers[0],
                "markers": list(v.markers)}
        partial = adapters_dir / f".{v.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        result = train_adapter(base, vrows, [], partial, args, card,
                               on_step=(lambda s, n, loss, name=v.name: on_step(name, s, n, loss)) if on_step else None)
        shutil.rmtree(adapters_dir / v.name, ignore_errors=True)
        partial.rename(adapters_dir / v.name)
        voices[v.name] = {"steps": result.steps, "rows": len(vrows), "seconds": round(result.seconds, 1),
                          "loss_first": round(result.train_loss[0], 3), "loss_last": round(result.train_loss[-1], 3)}

    info = {"recipe": asdict(recipe), "parameters": sum(p.numel() for p in model.parameters()),
            "base_rows": len(rows), "base_seconds": round(base_seconds, 1),
            "base_loss_first": round(losses[0], 3), "base_loss_last": round(sum(losses[-20:]) / len(losses[-20:]), 3),
            "voices": voices, "total_seconds": round(time.perf_counter() - t0, 1),
            "torch_threads": torch.get_num_threads(),
            "model_mb": round(sum(f.stat().st_size for f in model_dir.iterdir()) / 1e6, 2)}
    (model_dir / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
