"""The base generator: any transformers causal LM by hub id (already cached) or local path.

Loading is the one place that knows about devices, dtypes and threads; everything else gets a
`LoadedModel`. A model that cannot be had offline becomes one `ModelError` that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from bot.config import ModelSettings
from bot.errors import ModelError

log = logging.getLogger(__name__)

# Used when a tokenizer has no chat template: plain role headers the model can learn or follow.
FALLBACK_ROLES = {"system": "### Instructions", "user": "### Customer", "assistant": "### Support"}
# Config keys that say nothing about the weights' shapes or meaning.
_VOLATILE_CONFIG = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
                    "use_cache", "_attn_implementation_autoset", "output_attentions", "output_hidden_states"}


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel, in eval mode
    tokenizer: object
    name: str  # as given: hub id or path; adapters name their base with it
    device: str
    context: int  # tokens of prompt + answer the model accepts

    @property
    def fingerprint(self) -> str:
        return config_fingerprint(self.model.config.to_dict())

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return render_chat(self.tokenizer, messages, add_generation_prompt)

    def encode(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        text = self.render(messages, add_generation_prompt)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def defuse_special(tokenizer, text: str) -> str:
    """`text` with the tokenizer's special-token strings broken by a word joiner (U+2060).

    The rendered prompt is tokenized as one string, so a document or a message holding "</s>" or
    "<|assistant|>" would otherwise reach the model as a real end-of-text or role marker: a forged
    turn. Only the template itself may produce those tokens.
    """
    specials = getattr(tokenizer, "_supportbot_specials", None)
    if specials is None:
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        found = {t.content for t in added.values() if getattr(t, "special", False)}
        found |= set(getattr(tokenizer, "all_special_tokens", []) or [])
        specials = sorted((t for t in found if len(t) > 1), key=len, reverse=True)
        try:
            tokenizer._supportbot_specials = specials
        except AttributeError:  # a tokenizer that refuses attributes: recompute each time
            pass
    for token in specials:
        if token in text:
            text = text.replace(token, token[0] + "\u2060" + token[1:])
    return text


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The tokenizer's chat template when it has one; otherwise a plain, documented fallback.

    Message contents are data: special-token strings inside them are defused first."""
    messages = [{**m, "content": defuse_special(tokenizer, m["content"])} if isinstance(m.get("content"), str) else m
                for m in messages]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    eos = tokenizer.eos_token or ""
    parts = [f"{FALLBACK_ROLES.get(m['role'], m['role'])}\n{m['content']}{eos}\n\n" for m in messages]
    if add_generation_prompt:
        parts.append(FALLBACK_ROLES["assistant"] + "\n")
    return "".join(parts)


def config_fingerprint(config: dict) -> str:
    """Hash of the architecture and sizes: two models with the same fingerprint take the same adapters."""
    stable = {k: v for k, v in sorted(config.items()) if k not in _VOLATILE_CONFIG and not k.startswith("_")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


# bf16 pays on a model of real size; on a few-million-parameter one the casts cost more than they save
BF16_MIN_PARAMETERS = 20_000_000


def bf16_supported(device: str) -> bool:
    """Whether bf16 math is native here (AVX512-BF16/AMX on CPU): elsewhere it is emulated and slower."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _device(wanted: str) -> str:
    import torch

    if wanted != "auto":
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _dtype(wanted: str, device: str):
    import torch

    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if wanted == "auto":
        return torch.bfloat16 if bf16_supported(device) else torch.float32
    if wanted not in table:
        raise ModelError(f"unknown model.dtype {wanted!r}", "use auto, fp32, bf16 or fp16")
    return table[wanted]


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1


def cannot_load_hint(name: str) -> str:
    if Path(name).expanduser().exists():
        return (f"{name} exists but is not a transformers causal-LM folder: it needs config.json, the "
                "weights as .safetensors and the tokenizer files (save_pretrained writes them)")
    if _looks_like_path(name):
        return f"there is no folder {name}: check the path given to --model"
    return (f"'{name}' is neither a local folder nor in the Hugging Face cache, and nothing is downloaded "
            f"at run time. On a machine with network run `hf download {name} --local-dir "
            f"./models/{Path(name).name}`, copy that folder here and pass --model ./models/{Path(name).name}")


def load_model(settings: ModelSettings, name: str | None = None) -> LoadedModel:
    name = name or settings.name
    if not name:  # the default: SmolLM2 with the grounded LoRA merged, fetched and converted on first use
        from bot import basemodel

        name = str(basemodel.ensure_default(basemodel.cache_root(settings.cache_dir), basemodel.progress_bar()))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    device = _device(settings.device)
    dtype = _dtype(settings.dtype, device)
    # auto: a small model stays fp32 (as in training), so it is loaded as fp32 and cast only if big enough
    auto_bf16 = settings.dtype == "auto" and dtype != torch.float32
    local = Path(name).expanduser()
    source = str(local) if local.exists() else name
    if not local.exists() and _looks_like_path(name):
        raise ModelError(f"cannot load the model {name!r}: no such folder", cannot_load_hint(name))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32 if auto_bf16 else dtype,
                                                     use_safetensors=True)
        if auto_bf16 and sum(p.numel() for p in model.parameters()) >= BF16_MIN_PARAMETERS:
            model = model.to(dtype)
        dtype = model.dtype
    except (OSError, ValueError, KeyError) as err:
        log.debug("model load failed", exc_info=True)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load the model {name!r}: {first}", cannot_load_hint(name)) from None
    if device != "cpu":
        model = model.to(device)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    context = min(settings.context_tokens or limit, limit)
    log.info("loaded %s (%s, %s, %d-token context)", name, device, str(dtype).replace("torch.", ""), context)
    return LoadedModel(model, tokenizer, name, device, context)
