"""The guardrail layer: the screening interface (:mod:`service.guard.scanner`) and Llama Guard
3 on Ollama as its implementation (:mod:`service.guard.llama_guard`)."""

from service.guard.llama_guard import LlamaGuard
from service.guard.scanner import (
    Category,
    Decision,
    GuardError,
    Message,
    Scanner,
    ScanResult,
    ScanStatus,
)

__all__ = [
    "Category",
    "Decision",
    "GuardError",
    "LlamaGuard",
    "Message",
    "ScanResult",
    "ScanStatus",
    "Scanner",
]
