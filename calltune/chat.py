"""Talk to a tuned model as the seller: it answers as the customer, with the same chat rendering as training."""
from __future__ import annotations

from typing import TYPE_CHECKING

from calltune.config import SplitConfig

if TYPE_CHECKING:
    from calltune.serve import Responder


def generate_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 64,
                   temperature: float = 0.0) -> str:
    """The assistant (customer) turn that follows `messages`; greedy when temperature is 0."""
    import torch

    if model.config.is_encoder_decoder:  # T5-style: the plain-text conversation its training read (calltune.seq2seq)
        from calltune.infer import instructions

        roles = {"user": "seller", "assistant": "customer"}
        turns = [m for m in messages if m["role"] != "system"]
        text = instructions({"system": next((m["content"] for m in messages if m["role"] == "system"), ""),
                             "history": [{"role": roles[m["role"]], "text": m["content"]} for m in turns[:-1]],
                             "prompt": turns[-1]["content"]})
        inputs, start = tokenizer(text, return_tensors="pt").to(model.device), 0
    else:
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True).to(model.device)
        start = inputs["input_ids"].shape[1]  # a causal model's output starts with the prompt
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, top_p=None, top_k=None, **sampling)
    return tokenizer.decode(out[0, start:], skip_special_tokens=True).strip()


class ChatSession:
    """One conversation: a system instruction, then alternating seller/customer turns.

    The model saw at most `history_turns` earlier turns before the seller's line in training, so the same
    window is kept here; the opening prompt stands in for the seller when the customer speaks first
    (answering the phone), exactly as in the training examples, and is not kept as a turn.
    """

    def __init__(self, responder: Responder, system: str | None = None, opening_prompt: str | None = None,
                 history_turns: int | None = None):
        """`responder`: the model (calltune.serve.load_responder: a local model folder or a Vertex endpoint); the
        system instruction defaults to the persona a local model was tuned with."""
        self.responder = responder
        split = SplitConfig()
        self.system = getattr(responder, "system", "") if system is None else system
        self.opening_prompt = split.opening_prompt if opening_prompt is None else opening_prompt
        self.history_turns = split.history_turns if history_turns is None else history_turns
        self.turns: list[dict] = []  # {"role": "seller"|"customer", "text": ...}

    def _messages(self, seller_text: str) -> list[dict]:
        history = self.turns[-self.history_turns:] if self.history_turns else []
        messages = [{"role": "system", "content": self.system}] if self.system else []
        messages += [{"role": "user" if t["role"] == "seller" else "assistant", "content": t["text"]} for t in history]
        return messages + [{"role": "user", "content": seller_text}]

    def reply(self, seller_text: str, max_new_tokens: int = 64, temperature: float = 0.0) -> str:
        """The customer's answer to the seller's line; both are added to the conversation."""
        answer = self.responder.reply(self._messages(seller_text), max_new_tokens, temperature)
        self.turns += [{"role": "seller", "text": seller_text}, {"role": "customer", "text": answer}]
        return answer

    def opening(self, max_new_tokens: int = 64, temperature: float = 0.0) -> str:
        """The customer's first line when the phone is answered."""
        if not self.opening_prompt:
            raise ValueError("no opening prompt is set: the seller speaks first")
        answer = self.responder.reply(self._messages(self.opening_prompt), max_new_tokens, temperature)
        self.turns.append({"role": "customer", "text": answer})
        return answer
