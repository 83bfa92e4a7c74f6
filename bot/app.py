"""Wiring: the one place that builds the object graph from settings. No globals elsewhere."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from bot.config import Settings

log = logging.getLogger(__name__)


@dataclass
class Bot:
    settings: Settings
    embeddings: object
    kb: object  # bot.knowledge.KnowledgeBase
    model: object = None  # bot.model.LoadedModel
    adapters: object = None  # bot.adapters.AdapterRegistry
    chain: object = None  # bot.chain.SupportChain


def quiet_libraries() -> None:
    """Offline and quiet: no hub calls, no telemetry, no library progress bars on our output."""
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TOKENIZERS_PARALLELISM": "false",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "ANONYMIZED_TELEMETRY": "False",
    }.items():
        os.environ.setdefault(key, value)
    import warnings

    warnings.filterwarnings("ignore", message=".*langchain-community.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module="langchain_community")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # raised inside peft
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def build_knowledge_base(settings: Settings, embeddings=None):
    from bot.embeddings import LocalEmbeddings
    from bot.knowledge import KnowledgeBase

    quiet_libraries()
    if settings.store.url:  # the index in PostgreSQL + pgvector, shared by every process pointed at it
        from bot.pgstore import PGKnowledgeBase, require_engines

        require_engines()  # before the embedding model loads: a missing extra is said at once
        return PGKnowledgeBase(settings, embeddings or LocalEmbeddings(settings.embedding_model))
    embeddings = embeddings or LocalEmbeddings(settings.embedding_model)
    return KnowledgeBase(settings, embeddings)


def adapter_registry(settings: Settings, loaded):
    """The adapters in settings.adapters_dir, plus the shipped voices when the model is the default one."""
    from pathlib import Path

    from bot import basemodel
    from bot.adapters import AdapterRegistry

    shipped = basemodel.VOICES_DIR if Path(loaded.name).name == basemodel.MODEL_NAME else None
    if settings.model.endpoint:  # the same folders and checks; the server holds the weights
        from bot.endpoint import RemoteAdapters

        return RemoteAdapters(loaded, settings.adapters_dir, shipped, settings.model)
    quantize = settings.model.quantize
    if quantize == "auto":
        quantize = "int8" if loaded.device == "cpu" else "none"
    elif quantize != "none" and loaded.device != "cpu":
        log.warning("model.quantize %s runs on the CPU only; the model is on %s: not quantized", quantize, loaded.device)
        quantize = "none"
    return AdapterRegistry(loaded, settings.adapters_dir, shipped, merge=settings.model.merge_voices, quantize=quantize)


def build_bot(settings: Settings, embeddings=None, loaded=None) -> Bot:
    """Knowledge base, model, adapters (scanned once here) and the chain over them.

    `loaded` lets a caller that already holds a model (tests, the eval) share it.
    """
    from bot.chain import SupportChain
    from bot.generation import Generator
    from bot.model import load_model

    kb = build_knowledge_base(settings, embeddings)
    if settings.model.endpoint:  # generation on a server (bot/endpoint.py): only the tokenizer is loaded here
        from bot.endpoint import remote_generator

        generator = remote_generator(settings)
    else:
        loaded = loaded or load_model(settings.model)
        adapters = adapter_registry(settings, loaded)
        adapters.scan()
        generator = Generator(loaded, adapters, settings.model)
    loaded, adapters = generator.loaded, generator.adapters
    chain = SupportChain(settings, kb, generator)
    return Bot(settings=settings, embeddings=kb.embeddings, kb=kb, model=loaded, adapters=adapters, chain=chain)
