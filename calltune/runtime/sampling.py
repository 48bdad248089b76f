"""What a responder is asked for (`Sampling`) and what it answers (`Generation`): plain data, no torch, so that
whatever only talks to a remote model (`calltune serve` of a Vertex endpoint) never imports the local runtime."""
from __future__ import annotations

from dataclasses import dataclass, field


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
    finish_reason: str  # "stop" (end of turn or a stop string), "end_of_call", "length" (max_new_tokens), "cancelled"
    token_ids: list[int] = field(default_factory=list, repr=False)  # the reply's tokens, as generated
    guard: object | None = None  # calltune.runtime.guardrails.Attempt: what guarded decoding did, when it ran
