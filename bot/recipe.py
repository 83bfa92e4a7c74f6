"""`supportbot model build`: the shipped adapters on SmolLM2-135M-Instruct, from a seed, on a CPU.

1. `grounded`: a LoRA on the converted base, trained to answer from passages (copy the fact with
   its [n]), to decline when no passage answers, and to keep conversation free of facts. It is
   merged into the base on first use (bot/basemodel.py), so "no voice" is grounded too.
2. One LoRA per voice on that merged model, trained on the same kinds of rows in the voice.

Rows are short (the chain shows the model the `keep` sentences of each passage closest to the
question, and trains the same way), the loss and output layer are taken at answer tokens only,
the LoRA sits on the top layers (the ones below run without gradients), and the math is bf16
where the CPU has it: what makes a step a few seconds on 2 cores. A GPU is used when there is one.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from bot import basemodel
from bot.config import ModelSettings, Settings, TrainArgs

log = logging.getLogger(__name__)


@dataclass
class ModelRecipe:
    """What `supportbot model build` trains; `quick()` is a miniature for tests on a tiny model."""

    grounded_rows: int = 2400
    grounded_steps: int = 100
    voice_rows: int = 900
    voice_steps: int = 80
    batch: int = 8
    lr: float = 5e-4
    rank: int = 8
    top_layers: int = 16  # of SmolLM2's 30
    keep: int = 1  # sentences shown per passage in the training rows, as the chain shows them
    # per voice, where it differs from `keep` (none now: on the grounded of one sentence, cheerful
    # kept its voice on one sentence too, 0.987, once trained 80 steps instead of 45)
    voice_keep: dict[str, int] = field(default_factory=dict)
    # answer rows that show the holding passage alone, as the chain does for a question asking a
    # value (chain.value_passages = 1); the rest show it among 1-3 others
    alone_share: float = 0.4
    decline_share: float = 0.08
    conversation_share: float = 0.15
    seed: int = 0

    @classmethod
    def quick(cls) -> "ModelRecipe":
        return cls(grounded_rows=40, grounded_steps=3, voice_rows=30, voice_steps=2, batch=4, top_layers=0)


def training_rows(loaded, passages: list[dict], recipe: ModelRecipe, voice, rows: int, seed: int) -> list:
    from bot.rows import answer_rows, conversation_rows
    from bot.training import encode

    talk = round(rows * recipe.conversation_share)
    keep = recipe.voice_keep.get(voice.name, recipe.keep) if voice else recipe.keep
    convs = answer_rows(passages, rows - talk, seed, voice=voice, keep=keep,
                        decline_share=recipe.decline_share, alone_share=recipe.alone_share)
    convs += conversation_rows(talk, seed + 1, voice=voice)
    random.Random(seed).shuffle(convs)
    encoded = [encode(loaded, c) for c in convs]
    return [e for e in encoded if len(e.input_ids) <= min(loaded.context, 768)]


def _train(loaded, rows, out: Path, recipe: ModelRecipe, steps: int, seed: int, card: dict, on_step) -> dict:
    from bot.training import train_adapter

    args = TrainArgs(max_steps=steps, lr=recipe.lr, batch_size=recipe.batch, rank=recipe.rank, alpha=2 * recipe.rank,
                     dropout=0.0, eval_fraction=0.0, seed=seed, checkpoint_every=0, top_layers=recipe.top_layers)
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    result = train_adapter(loaded, rows, [], partial, args, card, on_step=on_step)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out)
    (out / "README.md").unlink(missing_ok=True)  # peft's blank model card: adapter_card.json is ours
    return {"steps": result.steps, "rows": len(rows), "seconds": round(result.seconds, 1),
            "seconds_per_step": round(result.seconds / max(result.steps, 1), 2),
            "loss_first": round(result.train_loss[0], 3),
            "loss_last": round(sum(result.train_loss[-10:]) / len(result.train_loss[-10:]), 3)}


def build(out_dir: Path | None = None, recipe: ModelRecipe | None = None, kb: Path | None = None,
          cache: Path | None = None, base: Path | None = None,
          on_step: Callable[[str, int, int, float], None] | None = None) -> dict:
    """Train `grounded` and the voices into `out_dir` (default: the package's bot/models/).

    `base`: a model folder to start from instead of the converted SmolLM2 (the tests' tiny model)."""
    import torch

    from bot.app import build_knowledge_base
    from bot.config import sample_kb
    from bot.model import LoadedModel, load_model
    from bot.rows import VOICES
    from bot.trainingdata import kb_passages

    recipe = recipe or ModelRecipe()
    out_dir = Path(out_dir or basemodel.HERE)
    cache = basemodel.cache_root(cache)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="supportbot-build-") as tmp:
        settings = Settings(kb=Path(kb) if kb else sample_kb(), data_dir=Path(tmp) / "data")
        with build_knowledge_base(settings) as knowledge:
            passages = kb_passages(knowledge)
    if not passages:
        raise ValueError(f"no passages in {settings.kb}: the adapters are trained on a knowledge base's text")
    step = (lambda part: (lambda s, n, loss: on_step(part, s, n, loss))) if on_step else (lambda part: None)
    fp32 = ModelSettings(dtype="fp32")

    base_dir = Path(base) if base else basemodel.ensure_base(cache)
    base_name = basemodel.BASE_NAME if base is None else base_dir.name
    loaded = load_model(fp32, name=str(base_dir))
    loaded = LoadedModel(loaded.model, loaded.tokenizer, base_name, loaded.device, loaded.context)
    rows = training_rows(loaded, passages, recipe, None, recipe.grounded_rows, recipe.seed)
    card = {"name": "grounded", "voice": "answers from passages with [n] citations; declines when they do not "
            "answer; no facts in small talk", "base_sha256": basemodel.GGUF_SHA256 if base is None else ""}
    info = {"recipe": asdict(recipe), "torch_threads": torch.get_num_threads(), "device": loaded.device,
            "grounded": _train(loaded, rows, out_dir / "grounded", recipe, recipe.grounded_steps, recipe.seed, card,
                               step("grounded"))}

    merged_dir = basemodel.ensure_default(cache, grounded=out_dir / "grounded") if base is None else None
    if merged_dir is None:  # a tiny test base: merge in memory into a temporary folder
        merged_dir = Path(tempfile.mkdtemp(prefix="supportbot-merged-")) / (base_name + "-supportbot")
        from peft import PeftModel

        fresh = load_model(fp32, name=str(base_dir))
        PeftModel.from_pretrained(fresh.model, str(out_dir / "grounded")).merge_and_unload().save_pretrained(merged_dir)
        fresh.tokenizer.save_pretrained(merged_dir)
    merged_name = basemodel.MODEL_NAME if base is None else merged_dir.name
    info["voices"] = {}
    for i, voice in enumerate(VOICES):
        seed = recipe.seed + 101 * (i + 1)
        loaded = load_model(fp32, name=str(merged_dir))
        loaded = LoadedModel(loaded.model, loaded.tokenizer, merged_name, loaded.device, loaded.context)
        rows = training_rows(loaded, passages, recipe, voice, recipe.voice_rows, seed)
        card = {"name": voice.name, "voice": voice.description, "opener": voice.openers[0],
                "closer": voice.closers[0], "markers": list(voice.markers),
                "base_sha256": basemodel.GGUF_SHA256 if base is None else "",
                "grounded_sha256": basemodel.grounded_stamp(out_dir / "grounded")}
        info["voices"][voice.name] = _train(loaded, rows, out_dir / "voices" / voice.name, recipe,
                                            recipe.voice_steps, seed, card, step(voice.name))
    info["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out_dir / "build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info
