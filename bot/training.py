"""LoRA fine-tuning of a voice adapter: loss on the assistant's tokens only, a plain torch loop.

`TrainArgs` is the single description of a run: the Python API takes it, `supportbot train`
builds its flags from it, and the adapter card records it. A plain loop (not `Trainer`) keeps
the run seeded, resumable and small enough to read; on CPU it is as fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from bot.adapters import CARD_FILE
from bot.config import TrainArgs
from bot.model import BF16_MIN_PARAMETERS, LoadedModel, bf16_supported

log = logging.getLogger(__name__)


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


def _batches(rows: list[Example], pad: int):
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
    """Mean cross-entropy at the answer tokens (what `model(labels=...).loss` gives), with the output
    layer applied only there: most of a row is prompt, and projecting every prompt position onto a
    49k-token vocabulary was most of a step's cost on SmolLM2."""
    import torch.nn.functional as F

    ids, labels, mask = (t.to(device) for t in _batches(rows, pad))
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    chosen = target != -100
    return F.cross_entropy(inner.get_output_embeddings()(hidden[chosen]).float(), target[chosen])


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


def precision_context(precision: str, device: str, parameters: int = 0):
    """A context manager factory: bf16 autocast (weights and LoRA stay fp32) or nothing.

    "auto" takes bf16 where it is native and the model is of real size: on a few-million-parameter
    test model the casts cost more than the matmuls they speed up."""
    import contextlib

    import torch

    small = parameters < BF16_MIN_PARAMETERS
    if precision == "fp32" or (precision == "auto" and (not bf16_supported(device) or small)):
        return contextlib.nullcontext
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(kind, dtype=torch.bfloat16)


def run_signature(args: TrainArgs, rows: list[Example]) -> str:
    """Same settings and same token rows: a checkpoint of one run may resume the other."""
    h = hashlib.sha256(json.dumps(asdict(args), sort_keys=True).encode())
    for r in rows:
        h.update(json.dumps([r.input_ids, r.labels]).encode())
    return h.hexdigest()[:16]


def batch_at(rows: list, step: int, size: int, seed: int) -> list:
    """The rows of optimizer step `step`: a pure function of (seed, step), so a resumed run sees
    exactly the batches the uninterrupted run would have."""
    out = []
    for pos in range(step * size, (step + 1) * size):
        epoch, i = divmod(pos, len(rows))
        perm = list(range(len(rows)))
        random.Random(seed * 100_003 + epoch).shuffle(perm)
        out.append(rows[perm[i]])
    return out


def train_adapter(
    loaded: LoadedModel,
    train: list[Example],
    held_out: list[Example],
    out_dir: Path,
    args: TrainArgs,
    card: dict,
    on_step: Callable[[int, int, float], None] | None = None,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    samples: list[str] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA on `loaded.model` (which it modifies: load a fresh model to serve) and save it.

    With `checkpoint_dir`, a checkpoint is written every `args.checkpoint_every` steps (and when
    the run is interrupted); `resume=True` continues from it to the same result.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from bot import checkpoint

    if not train:
        raise ValueError("no training rows")
    torch.manual_seed(args.seed)
    targets = args.target_modules if args.target_modules == "all-linear" else [
        t.strip() for t in args.target_modules.split(",") if t.strip()]
    layers = getattr(loaded.model.config, "num_hidden_layers", 0)
    only = list(range(max(0, layers - args.top_layers), layers)) if 0 < args.top_layers < layers else None
    if only and targets == "all-linear":  # peft takes a layer list only with module names
        targets = sorted({name.rsplit(".", 1)[-1] for name, mod in loaded.model.named_modules()
                          if isinstance(mod, torch.nn.Linear) and ".layers." in name})
    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout,
                        target_modules=targets, task_type="CAUSAL_LM", layers_to_transform=only)
    model = get_peft_model(loaded.model, config)
    autocast = precision_context(args.precision, loaded.device, sum(p.numel() for p in loaded.model.parameters()))
    pad = loaded.tokenizer.pad_token_id
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = args.max_steps or max(1, math.ceil(args.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    result = TrainResult(out_dir=out_dir, steps=total)
    start = 0
    if resume and checkpoint_dir and checkpoint.exists(checkpoint_dir):
        start, result.train_loss, result.first_eval_loss = checkpoint.load(
            checkpoint_dir, model, opt, sched, run_signature(args, train))
        log.info("resumed from step %d of %d", start, total)
    elif held_out:
        result.first_eval_loss = evaluate(model, held_out, pad, loaded.device)
    t0 = time.perf_counter()
    try:
        for step in range(start, total):
            model.train()
            with autocast():
                loss = _loss(model, batch_at(train, step, args.batch_size, args.seed), pad, loaded.device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            result.train_loss.append(loss.item())
            if checkpoint_dir and args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 and step + 1 < total:
                checkpoint.save(checkpoint_dir, model, opt, sched, step + 1, run_signature(args, train), result)
            if on_step:
                on_step(step + 1, total, loss.item())
    except KeyboardInterrupt:
        if checkpoint_dir and len(result.train_loss) > start:  # the last completed step
            checkpoint.save(checkpoint_dir, model, opt, sched, len(result.train_loss), run_signature(args, train), result)
        raise
    result.seconds = time.perf_counter() - t0
    model.eval()
    result.eval_loss = evaluate(model, held_out, pad, loaded.device) if held_out else None
    card = {**card, "samples": sample_replies(model, loaded, samples)} if samples else card
    save_adapter(model, loaded, out_dir, args, card, result)
    if checkpoint_dir:
        checkpoint.remove(checkpoint_dir)
    return result


def sample_replies(model, loaded: LoadedModel, prompts: list[str], max_new_tokens: int = 60) -> list[dict]:
    """A few replies of the trained adapter, for the card: what the voice sounds like."""
    import torch

    out = []
    for prompt in prompts:
        ids = loaded.encode([{"role": "user", "content": prompt}])
        with torch.inference_mode():
            gen = model.generate(input_ids=torch.tensor([ids], device=loaded.device), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
        out.append({"prompt": prompt, "reply": loaded.tokenizer.decode(gen[0, len(ids):], skip_special_tokens=True).strip()})
    return out


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


def train_voice(
    settings,
    data: Path,
    name: str,
    base: str | None = None,
    card: dict | None = None,
    fill: dict[str, str] | None = None,
    samples: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_step: Callable[[int, int, float], None] | None = None,
    on_report: Callable[[dict], None] | None = None,
) -> dict:
    """`supportbot train` as a function: JSONL -> `<adapters_dir>/<name>/` (weights + card). Returns a summary."""
    import shutil

    from bot.adapters import NAME_RE
    from bot.errors import SupportbotError
    from bot.model import load_model
    from bot.trainingdata import check_bad_share, context_rows, kb_passages, load_rows, split

    args: TrainArgs = settings.train
    if not NAME_RE.fullmatch(name) or name == "none":
        raise SupportbotError(f"adapter name {name!r} is not allowed",
                              "use letters, digits, '-', '_' or '.', and not 'none'")
    target = settings.adapters_dir / name
    if target.exists() and not overwrite:
        raise SupportbotError(f"{target} already exists", "pass --overwrite to replace it (a rescan picks up the new one)")
    rows, report = load_rows(data, args.placeholders, fill)
    check_bad_share(report, args.max_bad_fraction)
    # trained in fp32 weights (bf16 autocast for the math where it pays: train.precision)
    model_settings = replace(settings.model, dtype="fp32") if settings.model.dtype == "auto" else settings.model
    loaded = load_model(model_settings, name=base)
    encoded = []
    for row in rows:
        ex = encode(loaded, row.messages, row.line)
        if len(ex.input_ids) > args.max_tokens:
            report.bad.append({"line": row.line, "reason": f"too long ({len(ex.input_ids)} tokens; limit {args.max_tokens})"})
        elif all(x == -100 for x in ex.labels):
            report.bad.append({"line": row.line, "reason": "the reply is empty after tokenisation"})
        else:
            encoded.append(ex)
    report.bad.sort(key=lambda b: b["line"])
    report.used = len(encoded)
    check_bad_share(report, args.max_bad_fraction)
    if on_report:
        on_report(report.to_dict())
    train, held_out = split(encoded, args.eval_fraction, args.seed)
    mixed = 0
    if args.with_context:
        from bot.app import build_knowledge_base

        docs = kb_passages(build_knowledge_base(settings))
        extra = [encode(loaded, r.messages, r.line) for r in
                 context_rows(docs, round(len(train) * args.context_fraction), args.seed)]
        extra = [e for e in extra if len(e.input_ids) <= args.max_tokens]
        train, mixed = train + extra, len(extra)
    samples = samples or [r.messages[-2]["content"] for r in rows if r.line in {e.line for e in held_out[:3]}][:3]
    partial = settings.adapters_dir / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    full_card = {"name": name, **(card or {}), "data": {**report.to_dict(), "train_rows": len(train) - mixed,
                 "eval_rows": len(held_out), "context_rows": mixed},
                 "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": loaded.device}
    result = train_adapter(loaded, train, held_out, partial, args, full_card, on_step,
                           checkpoint_dir=settings.data_dir / "checkpoints" / name, resume=resume, samples=samples)
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)  # one rename: a rescan never sees half an adapter
    return {"adapter": name, "path": str(target), "base": loaded.name, "steps": result.steps,
            "train_loss_first": result.train_loss[0] if result.train_loss else None,
            "train_loss_last": result.train_loss[-1] if result.train_loss else None,
            "eval_loss_before": result.first_eval_loss, "eval_loss": result.eval_loss,
            "seconds": round(result.seconds, 2), "data": report.to_dict(), "context_rows": mixed}
