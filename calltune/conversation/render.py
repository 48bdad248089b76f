"""Renderings of an Example: Vertex Gemini SFT JSONL and Hugging Face `messages` JSONL.

The seller is the `user` (the trainee types), the customer is the `model`/`assistant`
(what the tuned model plays); the example's target is always the last assistant turn.
"""
from __future__ import annotations

from calltune.conversation.schema import Example

_HF_ROLE = {"seller": "user", "customer": "assistant"}
_VERTEX_ROLE = {"seller": "user", "customer": "model"}


def reply_text(example: Example) -> str:
    """The customer's reply as the model learns it: the call's closing turn ends with the end-of-call marker."""
    marker = example.get("end_of_call")
    return f"{example['target']} {marker}" if marker and example["target"] else example["target"]


def dialogue(example: Example) -> list[tuple[str, str]]:
    """(role, text) of every turn: history, the seller's line, the customer's reply (with its end-of-call marker)."""
    turns = [(t["role"], t["text"]) for t in example["history"]]
    return turns + [("seller", example["prompt"]), ("customer", reply_text(example))]


def to_messages(example: Example) -> dict:
    messages = [{"role": "system", "content": example["system"]}] if example["system"] else []
    messages += [{"role": _HF_ROLE[r], "content": t} for r, t in dialogue(example)]
    return {"messages": messages}


def to_vertex(example: Example) -> dict:
    row: dict = {}
    if example["system"]:
        row["systemInstruction"] = {"role": "system", "parts": [{"text": example["system"]}]}
    row["contents"] = [{"role": _VERTEX_ROLE[r], "parts": [{"text": t}]} for r, t in dialogue(example)]
    return row
