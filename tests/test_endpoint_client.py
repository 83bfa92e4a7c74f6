"""bot/endpoint.py's client side against a small fake OpenAI-compatible server (fast: no vLLM).

What the real server cannot be made to do on cue is checked here: a reply that loops, a request
cut by the client (the fake sees the disconnect), an unknown served name (404), which voices are
offered from what /v1/models lists, a rescan that loads a new folder into the server. The real
server is tested in tests/test_endpoint.py (marked engines).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

if importlib.util.find_spec("langchain_openai") is None:  # a skip on a developer's machine, a failure in CI
    _missing = "the engines extra is not installed: pip install -e '.[engines]'"
    pytest.fail(_missing, pytrace=False) if os.environ.get("CI") else pytest.skip(_missing, allow_module_level=True)

BASE = "tiny-llama"


class Fake(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.served = {"none", "sunny"}
        self.reply = ["The", " Plus", " plan", " costs", " $4.99", " a", " month", " [1]."]
        self.delay = 0.0
        self.requests: list[dict] = []
        self.loaded: list[dict] = []
        self.aborted = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: Fake

    def log_message(self, *args):
        pass

    def _json(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        models = [{"id": BASE, "object": "model", "max_model_len": 512}]
        models += [{"id": n, "object": "model", "parent": BASE, "root": f"/srv/{n}"} for n in sorted(self.server.served)]
        self._json(200, {"object": "list", "data": models})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/load_lora_adapter":
            self.server.loaded.append(body)
            self.server.served.add(body["lora_name"])
            return self._json(200, "Success")
        self.server.requests.append(body)
        if body["model"] not in self.server.served:
            return self._json(404, {"error": {"message": f"The model `{body['model']}` does not exist.",
                                              "type": "NotFoundError", "code": 404}})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        try:
            for piece in self.server.reply:
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(self.server.delay)
            usage = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"], "choices": [],
                     "usage": {"prompt_tokens": 77, "completion_tokens": len(self.server.reply), "total_tokens": 0}}
            self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.server.aborted.set()


@pytest.fixture
def fake():
    server = Fake()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def voices_dir(tiny_base, tmp_path_factory):
    """Two voice folders that pass the adapter checks, made in an instant: `supportbot vllm`'s zero
    LoRA under other names (what they say does not matter here: the fake server answers)."""
    from transformers import AutoConfig

    from bot.vllmserve import write_zero_adapter

    root = tmp_path_factory.mktemp("voices")
    for name in ("sunny", "formal"):
        write_zero_adapter(root / name, tiny_base.name, AutoConfig.from_pretrained(tiny_base))
        (root / name / "adapter_card.json").write_text(json.dumps({"name": name, "base_model": tiny_base.name}))
    return root


def _generator(tiny_base, voices_dir, url, tmp_path, **model):
    from bot.app import adapter_registry
    from bot.config import Settings
    from bot.endpoint import EndpointGenerator, load_tokenizer_model, served_models

    shutil.copytree(voices_dir, tmp_path / "adapters")
    settings = Settings(adapters_dir=tmp_path / "adapters", data_dir=tmp_path / "data")
    settings.model.name, settings.model.endpoint = str(tiny_base), url
    for key, value in model.items():
        setattr(settings.model, key, value)
    loaded = load_tokenizer_model(settings.model, served_models(url))
    adapters = adapter_registry(settings, loaded)
    adapters.scan()
    return EndpointGenerator(loaded, adapters, settings.model)


ASK = [{"role": "user", "content": "How much is Plus?"}]


def test_streams_the_reply_with_the_servers_counts(fake, tiny_base, voices_dir, tmp_path):
    from bot.generation import GenerationStats

    gen = _generator(tiny_base, voices_dir, fake.url, tmp_path)
    assert gen.loaded.context == 512 and gen.loaded.device == "endpoint"  # the server's max_model_len
    stats = GenerationStats()
    assert "".join(gen.stream(ASK, "sunny", stats=stats, max_new_tokens=30)) == "".join(fake.reply)
    sent = fake.requests[-1]
    assert sent["model"] == "sunny" and sent["temperature"] == 0 and sent["stream"] is True
    assert (sent.get("max_completion_tokens") or sent.get("max_tokens")) == 30
    assert stats.done.is_set() and (stats.prompt_tokens, stats.new_tokens) == (77, len(fake.reply))
    "".join(gen.stream(ASK, None))
    assert fake.requests[-1]["model"] == "none"  # no voice: the zero adapter, never the base model's name


def test_voices_follow_what_the_server_serves(fake, tiny_base, voices_dir, tmp_path):
    gen = _generator(tiny_base, voices_dir, fake.url, tmp_path)
    status = {a.name: (a.status, a.reason) for a in gen.adapters.adapters.values()}
    assert status["sunny"][0] == "loaded"
    assert fake.loaded == [{"lora_name": "formal", "lora_path": str((tmp_path / "adapters" / "formal").resolve()),
                            "load_inplace": True}]  # not served: sent to the server at the first scan
    assert gen.adapters.names() == ["none", "formal", "sunny"]
    fake.served.add("elsewhere")  # served by the server only: offered, without a card
    gen.adapters.scan()
    assert gen.adapters.adapters["elsewhere"].status == "loaded" and "elsewhere" in gen.adapters.names()


def test_stop_and_a_closed_reader_close_the_request(fake, tiny_base, voices_dir, tmp_path):
    from bot.generation import GenerationStats

    gen = _generator(tiny_base, voices_dir, fake.url, tmp_path)
    fake.reply, fake.delay = [f" word{i}" for i in range(200)], 0.01
    stop, stats, got = threading.Event(), GenerationStats(), []
    for piece in gen.stream(ASK, "sunny", stop=stop, stats=stats):
        got.append(piece)
        if len(got) == 3:
            stop.set()
    assert len(got) == 3 and stats.stopped and stats.done.is_set()
    assert fake.aborted.wait(3), "the HTTP stream stayed open after the stop"
    fake.aborted.clear()
    stream = gen.stream(ASK, "sunny")
    next(stream)
    stream.close()
    assert fake.aborted.wait(3), "the HTTP stream stayed open after the reader went away"


def test_loop_guard_runs_on_the_streamed_text(fake, tiny_base, voices_dir, tmp_path):
    from bot.generation import GenerationStats

    gen = _generator(tiny_base, voices_dir, fake.url, tmp_path, loop_tokens=4)
    fake.reply = [" ok then"] * 60
    stats = GenerationStats()
    text = "".join(gen.stream(ASK, "sunny", stats=stats))
    assert stats.looped and len(text) < len("".join(fake.reply)) and stats.new_tokens < 30


def test_errors_a_chat_can_show(fake, tiny_base, voices_dir, tmp_path):
    from bot.adapters import AdapterError
    from bot.endpoint import EndpointError
    from ui.format import customer_error

    gen = _generator(tiny_base, voices_dir, fake.url, tmp_path)
    with pytest.raises(AdapterError, match="'pirate' is not available"):
        "".join(gen.stream(ASK, "pirate"))
    fake.served.discard("sunny")  # the server stopped serving a voice the last scan saw
    with pytest.raises(AdapterError, match="not served by the generation server"):
        "".join(gen.stream(ASK, "sunny"))
    fake.shutdown()
    fake.server_close()  # the server is gone: a short message, no URL, for the chat
    with pytest.raises(EndpointError) as err:
        "".join(gen.stream(ASK, "none"))
    shown = customer_error(err.value)
    assert "unavailable" in shown and "127.0.0.1" not in shown and len(shown) < 100, shown
