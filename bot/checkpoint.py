"""Resumable training checkpoints without pickle: tensors in safetensors, the rest in JSON.

Holds the LoRA weights, AdamW's moments, the scheduler position, torch's RNG state (dropout) and
the losses so far. Batches are a pure function of (seed, step) (`training.batch_at`), so a resumed
run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

TENSORS, STATE = "checkpoint.safetensors", "checkpoint.json"


def exists(folder: Path) -> bool:
    return (Path(folder) / STATE).is_file() and (Path(folder) / TENSORS).is_file()


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def save(folder: Path, model, opt, sched, step: int, signature: str, result) -> None:
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {f"lora.{k}": v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    opt_state = opt.state_dict()
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / TENSORS))
    meta = {"step": step, "signature": signature, "param_groups": opt_state["param_groups"],
            "scheduler": {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"},
            "train_loss": result.train_loss, "first_eval_loss": result.first_eval_loss}
    (tmp / STATE).write_text(json.dumps(meta), encoding="utf-8")
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def load(folder: Path, model, opt, sched, signature: str) -> tuple[int, list[float], float | None]:
    """Restore into freshly built model/optimizer/scheduler; returns (step, losses, first eval loss)."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from bot.errors import SupportbotError

    folder = Path(folder)
    meta = json.loads((folder / STATE).read_text(encoding="utf-8"))
    if meta.get("signature") != signature:
        raise SupportbotError(f"the checkpoint in {folder} is from another run (other data or settings)",
                              "resume with the same data and settings, or drop --resume to start over")
    tensors = load_file(str(folder / TENSORS))
    set_peft_model_state_dict(model, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")})
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(opt.param_groups)})
    torch.set_rng_state(tensors["rng.torch"])
    return meta["step"], list(meta["train_loss"]), meta["first_eval_loss"]
