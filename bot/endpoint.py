"""Generation on an OpenAI-compatible multi-LoRA server (vLLM), with the `stream(...)` of bot/generation.py.

With `model.endpoint` set this process keeps only the tokenizer and config of the model folder (no
weights: the chain still counts tokens to fit passages, and the adapter checks read the module
shapes from a weightless skeleton) and asks the server for every answer through langchain-openai's
`ChatOpenAI`, streamed. The voice is the `model` of each request: a voice is a LoRA the server
serves under its folder name, and "none" is a zero adapter (B = 0, written by `supportbot vllm`),
never the base model's own name: vLLM gives a base-model request batched with adapter requests the
last adapter slot's weights (upstream PRs #48421, #49656), a zero adapter does not have that bug.

The adapter folders are the same ones the in-process path loads, checked by the same code
(bot/adapters.py); a voice is offered when its folder passes and the server serves it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from bot.adapters import NONE, Adapter, AdapterError, AdapterRegistry
from bot.config import ModelSettings
from bot.errors import ModelError
from bot.generation import GenerationStats, repeats
from bot.model import LoadedModel, cannot_load_hint, defuse_special

log = logging.getLogger(__name__)

DEFAULT_SERVER_CONTEXT = 2048  # `supportbot vllm` serves --max-model-len 2048 (STACK-NOTES); used when unreachable
UNAVAILABLE = "the answering service is unavailable right now"


class EndpointError(ModelError):
    """The generation server cannot be reached, or refused a request."""


def api_base(endpoint: str) -> str:
    """`http://host:8000`, `.../` or `.../v1` -> `http://host:8000/v1` (what ChatOpenAI's base_url wants)."""
    root = endpoint.strip().rstrip("/")
    return root if root.endswith("/v1") else root + "/v1"


def http_json(endpoint: str, path: str, key: str = "", body: dict | None = None, timeout: float = 5.0):
    """GET (or POST `body` to) `<endpoint>/v1<path>`: the parsed JSON, or the text. Raises EndpointError
    when the server cannot be reached, urllib.error.HTTPError when it answers with an error status."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(api_base(endpoint) + path, data=data, headers=headers,
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError:  # an answer (404, 400...): the caller decides; it is an OSError too
        raise
    except (OSError, urllib.error.URLError) as err:  # refused, reset, timed out, no route
        raise EndpointError(f"the generation server at {endpoint} cannot be reached: {err}",
                            "start it (`supportbot vllm --start` prints its log) or fix model.endpoint") from None
    try:
        return json.loads(text)
    except ValueError:
        return text


def served_models(endpoint: str, key: str = "", timeout: float = 5.0) -> list[dict]:
    """GET /v1/models: the base model (no `parent`) and every LoRA (`parent` names the base)."""
    found = http_json(endpoint, "/models", key, timeout=timeout)
    return [m for m in (found.get("data", []) if isinstance(found, dict) else []) if isinstance(m, dict)]


def load_tokenizer_model(settings: ModelSettings, served: list[dict] | None = None) -> LoadedModel:
    """Tokenizer, config and a weightless skeleton (meta device) of the model folder the server serves.

    The context is the smallest of model.context_tokens, the model's own limit and the server's
    max_model_len (the server refuses prompt + answer beyond it)."""
    name = settings.name
    if not name:
        from bot import basemodel

        name = str(basemodel.ensure_default(basemodel.cache_root(settings.cache_dir), basemodel.progress_bar()))
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = Path(name).expanduser()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source) if source.exists() else name)
        config = AutoConfig.from_pretrained(str(source) if source.exists() else name)
        with torch.device("meta"):  # module shapes for the adapter checks, no memory
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load the tokenizer of {name!r}: {first}", cannot_load_hint(name)) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    limit = getattr(config, "max_position_embeddings", None) or DEFAULT_SERVER_CONTEXT
    server = [m.get("max_model_len") for m in served or [] if not m.get("parent") and m.get("max_model_len")]
    if served is None:
        log.info("generation server not reached: assuming its max_model_len is %d", DEFAULT_SERVER_CONTEXT)
    context = min(settings.context_tokens or limit, limit, int(server[0]) if server else DEFAULT_SERVER_CONTEXT)
    log.info("tokenizer of %s, no weights (%d-token context)%s", name, context,
             f"; generation on {settings.endpoint}" if settings.endpoint else "")
    return LoadedModel(skeleton.eval(), tokenizer, name, "endpoint", context)


class RemoteAdapters(AdapterRegistry):
    """The adapter folders, checked as in-process (name, pickles, base model, fingerprint, shapes), but
    loaded by the server: a voice is available when its folder passes and the server serves it (or
    the server has not been reached yet: the command line of `supportbot vllm` serves every folder
    that passes). A served LoRA without a local folder is offered too, without a card.

    A folder that is new or changed at a rescan is sent to the server (`POST /v1/load_lora_adapter`,
    load_inplace), which works when the server runs on this machine with
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (`supportbot vllm --start` sets it): a retrained voice
    goes live without a restart."""

    def __init__(self, loaded, directory: Path, shipped: Path | None, settings: ModelSettings):
        super().__init__(loaded, directory, shipped)
        self.settings = settings
        self.served: dict[str, dict] | None = None  # served id -> its /v1/models entry; None: not reached
        self._checked: dict[str, Adapter] = {}  # each folder's own check, before the server's say

    def fetch_served(self) -> dict[str, dict] | None:
        if not self.settings.endpoint:
            return None
        try:
            models = served_models(self.settings.endpoint, self.settings.endpoint_key)
        except (EndpointError, urllib.error.HTTPError) as err:
            log.warning("generation server: %s", str(err).splitlines()[0])
            return self.served  # keep what it served last
        return {m["id"]: m for m in models if m.get("id")}

    def scan(self) -> list[Adapter]:
        self.served = self.fetch_served()
        with self._scan_lock:  # served-only entries are not folders: out of the way of the folder scan
            self.adapters = {n: a for n, a in self.adapters.items() if n in self._checked}
        super().scan()
        with self._scan_lock:
            self._checked = {n: a for n, a in self._checked.items() if n in self.adapters}  # folders removed
            published = {n: self._with_server(self._checked[n]) for n in self.adapters}
            for sid, entry in list((self.served or {}).items()):
                if not entry.get("parent") or sid in published or sid == NONE:
                    continue
                if self._removed(Path(str(entry.get("root", "")))):  # its folder was deleted here: as in-process
                    self._unload(sid)
                    continue
                published[sid] = Adapter(sid, Path(str(entry.get("root", ""))), "loaded", internal=sid,
                                         base=str(entry.get("parent")),
                                         reason="served by the generation server; no local folder (no card)")
            self.adapters = published
            if self.served is not None and NONE not in self.served:
                log.warning("the generation server does not serve the zero adapter %r: answers without a voice "
                            "will fail; restart it with the command line of `supportbot vllm`", NONE)
            return list(self.adapters.values())

    def _removed(self, root: Path) -> bool:
        """A served folder of ours (adapters_dir, the shipped voices) that is gone."""
        ours = [d.resolve() for d in (self.directory, self.shipped) if d]
        return root.resolve().parent in ours and not root.is_dir()

    def _unload(self, name: str) -> None:
        try:
            http_json(self.settings.endpoint, "/unload_lora_adapter", self.settings.endpoint_key, {"lora_name": name})
            log.info("adapter %s: folder removed, unloaded from the generation server", name)
        except (EndpointError, urllib.error.HTTPError) as err:
            log.warning("adapter %s: folder removed, but the generation server kept it (%s)", name, err)
        self.served.pop(name, None)

    def _with_server(self, own: Adapter) -> Adapter:
        if own.status != "loaded" or self.served is None or own.name in self.served:
            return own
        return Adapter(own.name, own.path, "skipped", stamp=own.stamp, card=own.card, base=own.base,
                       reason=f"passes the checks, but {self.settings.endpoint} does not serve it: restart the "
                              f"server with the command line of `supportbot vllm`")

    def _load(self, folder: Path, stamp: str) -> Adapter:
        a = super()._load(folder, stamp)
        a.internal = a.name if a.status == "loaded" else ""  # the served name
        self._checked[a.name] = a
        return a

    def _attach(self, folder: Path, internal: str) -> None:
        name = folder.name
        if self.served is None or (name in self.served and name not in self._checked):
            return  # not reached, or served since the server started: nothing to send
        try:  # new or changed since the last scan: try to make it live without a restart
            http_json(self.settings.endpoint, "/load_lora_adapter", self.settings.endpoint_key,
                      {"lora_name": name, "lora_path": str(folder.resolve()), "load_inplace": True}, timeout=60)
            self.served[name] = {"id": name, "root": str(folder.resolve()), "parent": "?"}
            log.info("adapter %s: loaded into the generation server", name)
        except (EndpointError, urllib.error.HTTPError) as err:
            detail = err.read().decode("utf-8", "replace")[:200] if isinstance(err, urllib.error.HTTPError) else err
            log.warning("adapter %s: the generation server did not load it (%s); it serves the version it "
                        "started with, if any: restart it", name, detail)

    def _drop(self, internal: str) -> None:  # the server keeps its own copies
        return None


class EndpointGenerator:
    """`stream(...)` as bot.generation.Generator, generated by the server at `settings.endpoint`.

    Differences from in-process generation:
    - `copy_from` (copy-friendly digit decoding, bot/copying.py) is a logits processor inside the
      model; it cannot run on the server and is ignored here.
    - The repetition guard (model.loop_tokens) runs on the streamed text, tokenized here.
    - A stop (the `stop` event, the reader closing the stream, the loop guard) closes the HTTP
      stream, and vLLM aborts a request whose client went away. It is noticed at the next piece of
      text, so not while the request still waits in the server's queue.
    - A server that cannot be reached is an EndpointError with a short message for the chat; the
      next answer tries again, so answers resume when the server is back.
    """

    def __init__(self, loaded: LoadedModel, adapters: AdapterRegistry, settings: ModelSettings):
        self.loaded = loaded
        self.adapters = adapters
        self.settings = settings
        self._chats: dict[str, object] = {}
        self._lock = threading.Lock()

    def chat_model(self, served: str):
        """The ChatOpenAI of one served name (built once: each holds an HTTP connection pool)."""
        with self._lock:
            if served not in self._chats:
                from langchain_openai import ChatOpenAI

                s = self.settings
                self._chats[served] = ChatOpenAI(base_url=api_base(s.endpoint), api_key=s.endpoint_key or "none",
                                                 model=served, temperature=s.temperature, streaming=True,
                                                 stream_usage=True, max_retries=0, timeout=s.endpoint_timeout)
            return self._chats[served]

    def stream(
        self,
        messages: list[dict],
        adapter: str | None = None,
        stop: threading.Event | None = None,
        max_new_tokens: int | None = None,
        stats: GenerationStats | None = None,
        copy_from: list[str] | None = None,  # ignored: see the class docstring
        **generate_kwargs,
    ) -> Iterator[str]:
        """Yield text pieces of the server's reply to `messages`, generated with voice `adapter`."""
        served = self.adapters.check(adapter)  # unknown voice: fail before any request
        stats = stats or GenerationStats()
        tok = self.loaded.tokenizer
        ids = self.loaded.encode(messages)
        stats.prompt_tokens = len(ids)
        budget = max(1, min(max_new_tokens or self.settings.max_new_tokens, self.loaded.context - len(ids)))
        # the server renders the same chat template; special-token strings in contents are data
        sent = [{"role": m["role"], "content": defuse_special(tok, m["content"])} for m in messages]
        loop, text, first, usage = self.settings.loop_tokens, "", None, None
        pieces = guarded = None
        try:
            pieces = self.chat_model(served).stream(sent, max_tokens=budget, **generate_kwargs)
            guarded = _guarded(pieces, self.settings.endpoint, served)
            for chunk in guarded:
                if chunk.usage_metadata:
                    usage = chunk.usage_metadata
                piece = chunk.content if isinstance(chunk.content, str) else ""
                if not piece:
                    continue
                now = time.perf_counter()
                text += piece
                new = tok(text, add_special_tokens=False)["input_ids"]
                if first is None:
                    first, stats.first_tokens = now, len(new)
                stats.seconds = now - first
                stats.new_tokens = len(new)
                yield piece
                if stop is not None and stop.is_set():
                    stats.stopped = True
                    return
                if loop and len(new) >= 2 * loop and repeats(new, loop):
                    stats.looped = True
                    return
            if usage:  # the server's own counts, where the answer ran to its end
                stats.prompt_tokens = usage.get("input_tokens", stats.prompt_tokens)
                stats.new_tokens = usage.get("output_tokens", stats.new_tokens)
        finally:  # also when the reader goes away (the sentence gate closed): the request ends with it
            for it in (guarded, pieces):
                if it is not None:
                    it.close()  # closes the HTTP response: vLLM aborts the request
            stats.done.set()


def _guarded(pieces, endpoint: str, served: str):
    """The chunks of `pieces`, with transport and server errors turned into supportbot errors."""
    import httpx
    import openai

    try:
        yield from pieces
    except openai.NotFoundError:
        raise AdapterError(f"voice {served!r} is not served by the generation server",
                           "restart it with the command line of `supportbot vllm`, then rescan the voices") from None
    except openai.AuthenticationError:
        raise EndpointError(UNAVAILABLE, "the generation server refused the API key: set model.endpoint_key") from None
    except openai.BadRequestError as err:
        log.warning("generation server %s refused a request for %s: %s", endpoint, served, err)
        raise EndpointError("this message could not be answered", "please rephrase it and try again") from None
    except (openai.APIError, httpx.HTTPError) as err:  # refused, cut, timed out, 5xx, an error event in the stream
        log.warning("generation server %s failed (%s: %s)", endpoint, type(err).__name__, str(err)[:200])
        raise EndpointError(UNAVAILABLE, "please try again in a minute") from None


def remote_generator(settings) -> EndpointGenerator:
    """The generator of `build_bot` when model.endpoint is set: tokenizer here, voices on the server."""
    import importlib.util

    from bot.app import adapter_registry

    ms = settings.model
    if importlib.util.find_spec("langchain_openai") is None:  # said at start-up, not at the first answer
        raise ModelError("model.endpoint needs langchain-openai, which is not installed",
                         "pip install 'supportbot[engines]', or unset model.endpoint to generate in-process")
    try:
        served = served_models(ms.endpoint, ms.endpoint_key)
    except (EndpointError, urllib.error.HTTPError) as err:
        log.warning("%s; answers will say the service is unavailable until it is back", str(err).splitlines()[0])
        served = None
    loaded = load_tokenizer_model(ms, served)
    adapters = adapter_registry(settings, loaded)
    adapters.scan()
    return EndpointGenerator(loaded, adapters, ms)


def adapters_listing(settings) -> tuple[dict, str]:
    """`supportbot adapters` with model.endpoint: what the server serves, and each local folder's state."""
    from bot.app import adapter_registry

    ms = settings.model
    models = served_models(ms.endpoint, ms.endpoint_key)
    registry = adapter_registry(settings, load_tokenizer_model(ms, models))
    found = registry.scan()
    payload = {"endpoint": ms.endpoint, "served": models, "adapters": [a.to_dict() for a in found]}
    lines = [f"generation server {ms.endpoint} serves:"]
    for m in models:
        if not m.get("parent"):
            what = "base model (never asked: none is the zero adapter)"
        elif m["id"] == NONE:
            what = f"zero adapter on {m['parent']}: the voice none"
        else:
            what = f"LoRA on {m['parent']}"
        lines.append(f"  {m['id']}: {what}" + (f"  ({m.get('root')})" if m.get("parent") else ""))
    lines.append("voices (local adapter folders checked against the server):")
    lines += [f"  {a.name}: {a.status}" + (f" - {a.reason}" if a.reason else "") for a in found] or ["  (none found)"]
    return payload, "\n".join(lines)
