"""LoRA fine-tuning of a voice adapter: loss on the assistant's tokens only, a plain torch loop.

`TrainArgs` is the single description of a run: the Python API takes it, `supportbot train`
builds its flags from it, and the adapter card records it. A plain loop (not `Trainer`) keeps
the run seeded, resumable and small enough to read; on CPU it is as fast.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from bot.adapters import CARD_FILE
from bot.config import _f
from bot.model import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class TrainArgs:
    epochs: float = _f(3.0, "passes over the training rows (fractions allowed)")
    max_steps: int = _f(0, "stop after this many optimizer steps (0: epochs decide)")
    lr: float = _f(2e-4, "learning rate (AdamW, linear decay after a 5% warm-up)")
    batch_size: int = _f(8, "rows per optimizer step")
    rank: int = _f(8, "LoRA rank r")
    alpha: int = _f(16, "LoRA alpha (scaling = alpha / r)")
    dropout: float = _f(0.05, "LoRA dropout")
    target_modules: str = _f("all-linear", "modules that get LoRA: all-linear or a comma list (q_proj,v_proj)")
    max_tokens: int = _f(768, "rows longer than this many tokens are skipped and reported")
    eval_fraction: float = _f(0.1, "share of rows held out for eval loss (0: none)")
    seed: int = _f(0, "seed for the split, the shuffling and the LoRA init: same seed, same adapter")
    samples: list = _f([], "prompts whose replies are generated after training and stored in the card")


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where the loss is not taken (everything but the assistant's words)
    line: int = 0


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    train_loss: list[float] = field(default_factory=list)
    eval_loss: float | None = None
    first_eval_loss: float | None = None
    seconds: float = 0.0


def encode(loaded: LoadedModel, messages: list[dict], line: int = 0) -> Example:
    """Token ids and labels: only assistant turns (and their end token) carry the loss."""
    ids: list[int] = []
    labels: list[int] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = loaded.encode(messages[:i], add_generation_prompt=True)
        upto = loaded.encode(messages[: i + 1], add_generation_prompt=False)
        if upto[: len(prefix)] != prefix:  # a template that re-tokenises across turns: mask by length
            prefix = upto[: len(loaded.encode(messages[:i], add_generation_prompt=True))]
        labels += [-100] * (len(prefix) - len(ids)) + upto[len(prefix):]
        ids = list(upto)
    return Example(ids, labels[: len(ids)], line)


def _batches(rows: list[Example], size: int, pad: int):
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for j, r in enumerate(rows):
        n = len(r.input_ids)
        ids[j, :n] = torch.tensor(r.input_ids)
        labels[j, :n] = torch.tensor(r.labels)
        mask[j, :n] = 1
    return ids, labels, mask


def _loss(model, rows: list[Example], pad: int, device: str):
    ids, labels, mask = (t.to(device) for t in _batches(rows, len(rows), pad))
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def evaluate(model, rows: list[Example], pad: int, device: str, batch: int = 8) -> float:
    import torch

    if not rows:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            n = sum(sum(1 for x in r.labels[1:] if x != -100) for r in chunk)
            total += _loss(model, chunk, pad, device).item() * n
            count += n
    return total / max(count, 1)


def train_adapter(
    loaded: LoadedModel,
    train: list[Example],
    held_out: list[Example],
    out_dir: Path,
    args: TrainArgs,
    card: dict,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA on `loaded.model` (which it modifies: load a fresh model to serve) and save it."""
    import torch
    from peft import LoraConfig, get_peft_model

    if not train:
        raise ValueError("no training rows")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    targets = args.target_modules if args.target_modules == "all-linear" else [
        t.strip() for t in args.target_modules.split(",") if t.strip()]
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                        target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(loaded.model, config)
    pad = loaded.tokenizer.pad_token_id
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = args.max_steps or max(1, math.ceil(args.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    result = TrainResult(out_dir=out_dir, steps=total)
    result.first_eval_loss = evaluate(model, held_out, pad, loaded.device) if held_out else None
    t0 = time.perf_counter()
    order: list[Example] = []
    rng = random.Random(args.seed)
    for step in range(total):
        if len(order) < args.batch_size:
            more = list(train)
            rng.shuffle(more)
            order += more
        batch, order = order[: args.batch_size], order[args.batch_size :]
        model.train()
        loss = _loss(model, batch, pad, loaded.device)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        result.train_loss.append(loss.item())
        if on_step:
            on_step(step + 1, total, loss.item())
    result.seconds = time.perf_counter() - t0
    model.eval()
    result.eval_loss = evaluate(model, held_out, pad, loaded.device) if held_out else None
    save_adapter(model, loaded, out_dir, args, card, result)
    return result


def save_adapter(model, loaded: LoadedModel, out_dir: Path, args: TrainArgs, card: dict, result: TrainResult) -> None:
    """safetensors weights + adapter_config.json naming the base + the card; never a pickle."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.peft_config["default"].base_model_name_or_path = loaded.name
    model.save_pretrained(str(out_dir), safe_serialization=True)
    full = {
        "base_model": loaded.name,
        "base_fingerprint": loaded.fingerprint,
        **card,
        "hyperparameters": asdict(args),
        "steps": result.steps,
        "train_loss_first": round(result.train_loss[0], 4) if result.train_loss else None,
        "train_loss_last": round(sum(result.train_loss[-5:]) / len(result.train_loss[-5:]), 4)
        if result.train_loss else None,
        "eval_loss_before": None if result.first_eval_loss is None else round(result.first_eval_loss, 4),
        "eval_loss": None if result.eval_loss is None else round(result.eval_loss, 4),
        "train_seconds": round(result.seconds, 2),
    }
    (out_dir / CARD_FILE).write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
