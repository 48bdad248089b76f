"""What a responder is asked for (`Sampling`) and what it answers (`Generation`): plain data, no torch, so that
whatever only talks to a remote model (`calltune serve` of a Vertex endpoint) never imports the local runtime."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string), "length" (max_new_tokens) or "cancelled"
