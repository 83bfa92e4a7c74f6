"""Voice adapters: scan `adapters/`, check each one, load them all into the one model, choose per request.

Per-request choice without global state: peft's `generate(adapter_names=...)` injects the choice
with hooks registered for the duration of the call, so two concurrent calls on one model see
each other's hooks and can get the wrong voice. Instead every layer reads the adapter from a
thread-local set by `using(name)`, and serves that adapter's merged weights (bot/merged.py):
each generation thread carries its own choice.

A rescan never disturbs an answer being generated: a retrained adapter is loaded under a new
internal name, published, and the old weights are dropped once no generation uses them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import SupportbotError
from bot.merged import BASE, WeightRouter

log = logging.getLogger(__name__)

CARD_FILE = "adapter_card.json"
NONE = "none"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
WEIGHTS = "adapter_model.safetensors"
SAFE_INIT = (True, False, "gaussian")  # values of init_lora_weights that leave the base weights alone
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
CONFIG = "adapter_config.json"


class AdapterError(SupportbotError):
    """An adapter was asked for that is not loaded."""


@dataclass
class Adapter:
    name: str
    path: Path
    status: str  # loaded | refused | skipped
    reason: str = ""
    card: dict = field(default_factory=dict)
    base: str = ""
    internal: str = ""  # the name inside peft (changes when a retrained version replaces it)
    stamp: str = ""

    @property
    def voice(self) -> str:
        return self.card.get("voice", "")

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "status": self.status, "reason": self.reason,
                "base": self.base, "voice": self.voice, "card": self.card}


class _RWLock:
    """Many generations at once, or one change to the set of loaded weights."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _stamp(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def same_base(wanted: str, loaded: str) -> bool:
    """Hub id and local copy of one model agree on the folder name ("Org/Model" ~ "/models/Model")."""
    a, b = wanted.strip().rstrip("/"), loaded.strip().rstrip("/")
    return a == b or (bool(a) and Path(a).name.lower() == Path(b).name.lower())


class AdapterRegistry:
    def __init__(self, loaded, directory: Path, shipped: Path | None = None, merge: bool = True,
                 quantize: str = "none"):
        self.loaded = loaded  # bot.model.LoadedModel
        self.directory = Path(directory)
        self.shipped = shipped  # the default model's shipped voices; `directory` wins on a name clash
        self.adapters: dict[str, Adapter] = {}
        self._peft = None  # PeftModel wrapping loaded.model once the first adapter is in
        self._local = threading.local()
        self._lock = _RWLock()
        self._scan_lock = threading.Lock()
        self._versions = 0
        # every linear layer serves the weights of the adapter its thread chose (bot/merged.py)
        self.router = WeightRouter(loaded.model, self.served, merge, quantize)
        self.router.refresh()

    # --- choosing -------------------------------------------------------------------------
    def names(self) -> list[str]:
        return [NONE] + sorted(n for n, a in self.adapters.items() if a.status == "loaded")

    def check(self, name: str | None) -> str:
        name = name or NONE
        found = self.adapters.get(name)
        if name != NONE and (found is None or found.status != "loaded"):
            why = found.reason if found else "no such adapter"
            raise AdapterError(f"adapter {name!r} is not available: {why}", f"choose one of: {', '.join(self.names())}")
        return name

    def card(self, name: str) -> dict:
        return self.adapters[name].card if name in self.adapters else {}

    @contextmanager
    def using(self, name: str | None):
        """Inside this block, generation on this thread uses adapter `name` (or none)."""
        name = self.check(name)
        with self._lock.read():
            internal = BASE if name == NONE else self.adapters[name].internal
            self._local.adapter = internal
            try:
                yield
            finally:
                self._local.adapter = None

    def served(self) -> str | None:
        """The weights this thread generates with inside `using()` (peft's internal name, or BASE)."""
        return getattr(self._local, "adapter", None)

    # --- loading --------------------------------------------------------------------------
    def scan(self) -> list[Adapter]:
        """Load new and changed adapter folders, drop removed ones. Safe while others generate."""
        with self._scan_lock:
            seen = set()
            folders = [p for d in (self.directory, self.shipped) if d and d.is_dir() for p in sorted(d.iterdir())
                       if p.is_dir() and not p.name.startswith(".")]
            for folder in folders:
                name = folder.name
                if name in seen:
                    continue
                seen.add(name)
                stamp = _stamp(folder)
                old = self.adapters.get(name)
                if old and old.stamp == stamp:
                    continue
                new = self._load(folder, stamp)
                self.adapters[name] = new  # publish: from here on requests get the new weights
                if old and old.internal and old.internal != new.internal:
                    self._drop(old.internal)
                level = logging.INFO if new.status == "loaded" else logging.WARNING
                log.log(level, "adapter %s: %s%s", name, new.status, f" ({new.reason})" if new.reason else "")
            for name in set(self.adapters) - seen:
                gone = self.adapters.pop(name)
                if gone.internal:
                    self._drop(gone.internal)
                log.info("adapter %s: removed", name)
            return list(self.adapters.values())

    def _load(self, folder: Path, stamp: str) -> Adapter:
        a = Adapter(folder.name, folder, "refused", stamp=stamp)
        if not NAME_RE.fullmatch(a.name) or a.name == NONE:
            a.reason = "folder name must be letters, digits, '-', '_' or '.' (and not 'none')"
            return a
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            a.reason = (f"holds pickle files ({', '.join(pickles)}), which can run code when loaded; "
                        f"only {WEIGHTS} is accepted: re-save with safe_serialization=True")
            return a
        outside = sorted(p.name for p in folder.iterdir() if p.is_symlink() and folder.resolve() not in p.resolve().parents)
        if outside:
            a.reason = f"{', '.join(outside)} point{'s' if len(outside) == 1 else ''} outside the adapter folder"
            return a
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            a.status, a.reason = "skipped", f"not a PEFT adapter: needs {CONFIG} and {WEIGHTS}"
            return a
        try:
            config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
            card = json.loads((folder / CARD_FILE).read_text(encoding="utf-8")) if (folder / CARD_FILE).is_file() else {}
            if not isinstance(config, dict) or not isinstance(card, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            a.status, a.reason = "skipped", f"corrupt {CONFIG} or {CARD_FILE}: {err}"
            return a
        a.card = card
        a.base = str(card.get("base_model") or config.get("base_model_name_or_path") or "")
        if config.get("peft_type", "LORA") != "LORA":
            a.reason = f"peft_type {config.get('peft_type')} is not supported (LoRA only)"
            return a
        if config.get("init_lora_weights", True) not in SAFE_INIT:
            # PiSSA, OLoRA, LoftQ, EVA...: peft derives the adapter from the base weights and
            # rewrites those weights in place when it loads: every voice, `none` too, would change
            a.reason = (f"init_lora_weights {config['init_lora_weights']!r} rewrites the shared base model's weights "
                        f"when loaded; use a plain LoRA (init_lora_weights true)")
            return a
        if config.get("megatron_config"):  # makes peft import the module named in megatron_core
            a.reason = "megatron_config is not supported (it makes peft import a module named in the config)"
            return a
        if any(k in config and config[k] for k in ("modules_to_save", "trainable_token_indices")):
            a.reason = "adapters that replace whole modules (modules_to_save) are not supported"
            return a
        loaded_name = self.loaded.name
        bases = {b for b in (card.get("base_model"), config.get("base_model_name_or_path")) if b}
        if not bases or not all(same_base(b, loaded_name) for b in bases):
            a.reason = (f"made for base model {' / '.join(sorted(bases)) or '(not stated)'}, "
                        f"but the loaded model is {loaded_name}")
            return a
        fp = card.get("base_fingerprint")
        if fp and fp != self.loaded.fingerprint:
            a.reason = (f"made for a different version of {a.base} (architecture fingerprint {fp}, "
                        f"loaded {self.loaded.fingerprint}): retrain it for this model")
            return a
        try:
            problem = self._shape_problem(folder / WEIGHTS)
        except Exception as err:  # safetensors raises its own types for a damaged header
            a.status, a.reason = "skipped", f"corrupt {WEIGHTS}: {err}"
            return a
        if problem:
            a.reason = f"does not fit the loaded model {loaded_name}: {problem}"
            return a
        self._versions += 1
        a.internal = f"{re.sub(r'[^A-Za-z0-9_-]', '_', a.name)}_v{self._versions}"
        try:
            self._attach(folder, a.internal)
        except Exception as err:
            log.debug("adapter load failed", exc_info=True)
            self._drop(a.internal)
            a.internal, a.status, a.reason = "", "skipped", f"could not be loaded: {err}"
            return a
        a.status = "loaded"
        return a

    def _shape_problem(self, weights: Path) -> str:
        """Every LoRA tensor must name a module of the model and fit its in/out sizes."""
        import torch
        from safetensors import safe_open

        modules = dict(self.loaded.model.named_modules())
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            if not keys:
                return "the weights file is empty"
            for key in keys:
                m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                                 r"(?:\.[^.]+)?\.weight", key) or re.fullmatch(
                                 r"(?:base_model\.model\.)?(.+)\.(lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?", key)
                if not m:
                    return f"unexpected tensor {key}"
                path, kind = m.groups()
                target = modules.get(path)
                target = getattr(target, "base_layer", target)
                if target is None:
                    return f"no module {path} in this model"
                shape = tuple(f.get_slice(key).get_shape())
                if isinstance(target, torch.nn.Linear):
                    want = target.in_features if kind == "lora_A" else target.out_features
                    got = shape[1] if kind == "lora_A" else shape[0]
                elif isinstance(target, torch.nn.Embedding):
                    want = target.num_embeddings if kind == "lora_embedding_A" else target.embedding_dim
                    got = shape[1] if kind == "lora_embedding_A" else shape[0]
                else:
                    return f"LoRA on {type(target).__name__} ({path}) is not supported"
                if want != got:
                    return f"{key} has shape {list(shape)}, the model's {path} needs {want}"
        return ""

    def _attach(self, folder: Path, internal: str) -> None:
        from peft import PeftModel

        with self._lock.write():
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.loaded.model, str(folder), adapter_name=internal,
                                                       is_trainable=False)
            else:
                self._peft.load_adapter(str(folder), adapter_name=internal, is_trainable=False)
            self.loaded.model.eval()
            self.router.refresh()

    def _drop(self, internal: str) -> None:
        if self._peft is None or internal not in self._peft.peft_config:
            return
        with self._lock.write():
            if len(self._peft.peft_config) > 1:
                if internal in self._peft.active_adapters:
                    other = next(n for n in self._peft.peft_config if n != internal)
                    self._peft.set_adapter(other)
                self._peft.delete_adapter(internal)
            self.router.forget(internal)
            # the last one stays in memory unused: peft cannot delete its only adapter
