"""Conversations -> token ids, the one definition shared by training, scoring, batch inference and serving.

A causal model reads the conversation rendered with its chat template; an encoder-decoder model's encoder reads it as
plain text (`instructions`: T5 tokenizers have no chat template; it is also the text the predictions table shows).
The "target tokens" are the customer reply and its end-of-turn token. A live conversation is windowed by
`calltune.conversation.windows.split_call` itself, with the split settings the model was trained with (`window`), so serving sees
exactly the context training saw.
"""
from __future__ import annotations

import logging
from pathlib import Path

from calltune.config import SplitConfig
from calltune.conversation.render import reply_text, to_messages
from calltune.conversation.schema import Example, Turn
from calltune.conversation.windows import split_call
from calltune.core.io import read_jsonl

log = logging.getLogger(__name__)

_PLACEHOLDER = " "  # the reply still to come: a non-empty customer turn, so split_call makes it a target


class PromptTooLong(ValueError):
    """The conversation does not fit the model's context even with no history."""


def instructions(example: dict) -> str:
    """The conversation up to the seller's line, as text; the same for every model, so tables line up."""
    lines = [f"system: {example['system']}"] if example.get("system") else []
    lines += [f"{t['role']}: {t['text']}" for t in example.get("history", [])]
    return "\n".join(lines + [f"seller: {example['prompt']}"])


def window(system: str, turns: list[Turn], split: SplitConfig) -> Example:
    """The example (system, history, prompt; empty target) whose reply is the customer's next line after `turns`
    (oldest first, ending with the seller's line, or empty when the customer answers the phone), windowed exactly as
    turn-split windows training calls: merged turns, the opening prompt, at most `history_turns` of history."""
    if turns and turns[-1]["role"] != "seller":
        raise ValueError("the last turn must be the seller's: the reply is the customer's next line")
    call = {"call_id": "live", "source_row": 0, "persona": {}, "system": system,
            "turns": [*turns, {"role": "customer", "text": _PLACEHOLDER}]}
    examples = split_call(call, split)
    if not examples or examples[-1]["target"] != _PLACEHOLDER:
        raise ValueError("the conversation has no seller line and no opening prompt (split.opening_prompt) is set")
    example = {**examples[-1], "target": ""}
    example.pop("end_of_call", None)  # the placeholder closes the live call only as far as the windowing knows
    return example


def _chat_ids(tokenizer, messages: list[dict], **kwargs) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]


def _prompt_messages(example: Example) -> list[dict]:
    return to_messages({**example, "target": ""})["messages"][:-1]


def _prompt_and_target(tokenizer, example: Example) -> tuple[list[int], list[int]]:
    prompt = _chat_ids(tokenizer, _prompt_messages(example), add_generation_prompt=True)
    full = _chat_ids(tokenizer, to_messages(example)["messages"])
    if full[:len(prompt)] != prompt:
        raise ValueError("the chat template renders the prompt differently on its own than before the reply; "
                         "the reply's tokens cannot be located")
    target = full[len(prompt):]
    # What the template writes after the end-of-turn token (ChatML: a newline) is layout, not the reply.
    eos = tokenizer.eos_token_id
    if eos in target:
        target = target[:len(target) - target[::-1].index(eos)]
    return prompt, target


def encode_causal(example: Example, tokenizer, max_len: int) -> dict | None:
    """{"input_ids", "completion_mask"} with the mask 1 exactly on the target tokens, rendered with the chat
    template. Too long: the oldest history turns go first, then prompt tokens from the left; the target is
    never cut. None when the target alone does not fit (with at least one prompt token before it)."""
    history = example["history"]
    for start in range(len(history) + 1):
        prompt, target = _prompt_and_target(tokenizer, {**example, "history": history[start:]})
        if len(prompt) + len(target) <= max_len:
            break
    room = max_len - len(target)
    if room < 1 or not target:
        return None
    prompt = prompt[-room:]
    return {"input_ids": prompt + target, "completion_mask": [0] * len(prompt) + [1] * len(target)}


def fitting_history(example: Example, tokenizer, max_len: int, replies: list[str]) -> Example | None:
    """The example with the longest end of its history that lets its prompt and each of `replies` (the customer's
    text as the model learns it, end-of-call marker included) fit `max_len` tokens, as `encode_causal` cuts a
    training row; None when none fits even without history."""
    history = example["history"]
    for start in range(len(history) + 1):
        trimmed = {**example, "history": history[start:], "end_of_call": ""}
        if all(sum(map(len, _prompt_and_target(tokenizer, {**trimmed, "target": r}))) <= max_len for r in replies):
            return trimmed
    return None


def encode_seq2seq(example: Example, tokenizer, max_len: int) -> dict | None:
    """{"input_ids": the encoder's tokens, "labels": the reply's tokens + eos}. A conversation too long for the
    encoder loses its oldest history turns first, then tokens from the left (the seller's line is the last to
    go). None when the reply and its eos alone exceed `max_len`."""
    labels = tokenizer(reply_text(example), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(labels) > max_len:
        return None
    history = example["history"]
    for start in range(len(history) + 1):
        ids = _seq2seq_prompt(tokenizer, {**example, "history": history[start:]})
        if len(ids) <= max_len:
            break
    return {"input_ids": ids[-max_len:], "labels": labels}


def _seq2seq_prompt(tokenizer, example: Example) -> list[int]:
    # With the tokenizer's own special tokens (T5: a closing </s>), as the model was pretrained.
    return tokenizer(instructions(example))["input_ids"]


def encoder(encoder_decoder: bool):
    """The training-row encoder of a causal or an encoder-decoder model."""
    return encode_seq2seq if encoder_decoder else encode_causal


def prompt_tokens(example: Example, tokenizer, encoder_decoder: bool, budget: int) -> list[int]:
    """The model's input for a live conversation: the prompt part of the training rows, rendered the same way.
    Over `budget` tokens the oldest history turns go first, as in training; PromptTooLong if even the system
    instruction and the seller's line alone do not fit."""
    history = example["history"]
    for start in range(len(history) + 1):
        trimmed = {**example, "history": history[start:]}
        ids = (_seq2seq_prompt(tokenizer, trimmed) if encoder_decoder
               else _chat_ids(tokenizer, _prompt_messages(trimmed), add_generation_prompt=True))
        if len(ids) <= budget:
            return ids
    raise PromptTooLong(f"the prompt is {len(ids)} tokens without any history; at most {budget} fit")


def encode_file(path: str | Path, tokenizer, max_len: int, limit: int = 0,
                encode=encode_causal) -> tuple[list[dict], list[Example], int]:
    """Encoded rows, the examples they came from, and how many examples were skipped (target too long)."""
    rows, examples, skipped = [], [], 0
    for example in read_jsonl(path):
        if limit and len(rows) >= limit:
            break
        try:
            encoded = encode(example, tokenizer, max_len)
        except KeyError as exc:
            raise ValueError(f"{path}: example {example.get('example_id', len(rows) + skipped + 1)!r} "
                             f"has a missing or invalid field ({exc})") from exc
        if encoded is None:
            skipped += 1
            log.warning("%s: example %s skipped: its customer reply alone exceeds max_seq_len=%d",
                        path, example.get("example_id"), max_len)
            continue
        rows.append(encoded)
        examples.append(example)
    return rows, examples, skipped


def prompt_ids(encoded: list[dict]) -> list[list[int]]:
    """The prompt part (everything before the target tokens) of each encoded row; a seq2seq row's `input_ids` are
    the encoder's, the prompt alone."""
    return [r["input_ids"] if "labels" in r else r["input_ids"][:r["completion_mask"].index(1)] for r in encoded]
