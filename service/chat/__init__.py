"""Guarded chat: the chat model on Ollama (:mod:`service.chat.model`) and the hold-back of
its streamed reply until the guard has passed each piece (:mod:`service.chat.holdback`)."""
