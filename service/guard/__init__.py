"""The guardrail layer: Llama Guard 3 on Ollama screens every request and every response."""

from service.guard.llama_guard import Guard
from service.guard.types import Category, GuardError, Message, Verdict

__all__ = ["Category", "Guard", "GuardError", "Message", "Verdict"]
