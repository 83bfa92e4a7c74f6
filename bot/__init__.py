"""supportbot: an offline customer-support chatbot (LoRA voice + retrieval with citations)."""

__version__ = "0.1.0"
