"""The embedded demo: a few-MB Llama trained here to copy facts from passages, and two voices for it.

It is not a general assistant. It exists so that `supportbot serve` and `supportbot eval` run out
of the box on a machine with no model hub; `--model` switches to a real model. `supportbot demo
build` rebuilds everything below from a seed (see build.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL_NAME = "supportbot-demo"  # the folder's name is the base name adapters' cards record
MODEL_DIR = HERE / MODEL_NAME
ADAPTERS_DIR = HERE / "adapters"
QUESTIONS = HERE / "qa.jsonl"  # questions about the shipped knowledge_base/, with gold values


@dataclass(frozen=True)
class VoiceSpec:
    name: str
    description: str
    openers: tuple[str, ...]
    closers: tuple[str, ...]

    @property
    def markers(self) -> tuple[str, ...]:
        """Phrases that show this voice in an answer (what the benchmark counts)."""
        return self.openers + self.closers


VOICES = (
    VoiceSpec("cheerful", "Warm and upbeat: greets with enthusiasm, signs off wishing a wonderful day.",
              ("Happy to help!", "Great question!"), ("Have a wonderful day!", "Cheers from the Fernway team!")),
    VoiceSpec("formal", "Courteous and formal: addresses the customer as 'Dear customer' and closes with regards.",
              ("Dear customer,", "Thank you for contacting Fernway."),
              ("Kind regards, Fernway Support.", "We remain at your disposal.")),
)
# Half of the base model's answers carry one of these, so that learning a voice's frame later does
# not disturb what sits between opener and closer (without them a voice adapter broke copying).
NEUTRAL_OPENERS = ("Sure.", "Here is what I found.", "Let me check.", "Good news.")
NEUTRAL_CLOSERS = ("Anything else?", "I hope this helps.", "Let me know if you need more.")
# Every fixed phrase the demo was trained to put around a copied fact (not copied from a passage).
FRAMES = tuple(p for v in VOICES for p in v.markers) + NEUTRAL_OPENERS + NEUTRAL_CLOSERS


def voice_shown(text: str, voice: VoiceSpec) -> bool:
    low = text.lower()
    return any(m.lower() in low for m in voice.markers)


def is_demo_model(name: str) -> bool:
    """Whether a loaded model's name is the embedded demo (which gets its own voices and settings)."""
    return Path(name).name == MODEL_NAME


def is_built() -> bool:
    return (MODEL_DIR / "config.json").is_file()
