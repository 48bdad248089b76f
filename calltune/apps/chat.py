"""Talk to a tuned model as the seller: it answers as the customer, windowed and rendered as in training
(`calltune.runtime`), and `calltune chat`'s terminal loop around it."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from calltune.runtime.responders import Responder, Sampling, conversation, reply

HELP = """Type the seller's lines; the model answers as the customer.
  /reset  start the call again (the customer answers the phone again unless you speak first)
  /help   this text
  /quit   leave (also Ctrl-D)"""


class ChatSession:
    """One conversation: a system instruction, then alternating seller/customer turns, windowed with the split
    settings the model was trained with (its model card), as `calltune serve` windows them."""

    def __init__(self, responder: Responder, system: str | None = None):
        """`system` None: the persona the model was tuned with (a local model's card)."""
        self.responder = responder
        self.system = responder.system if system is None else system
        self.turns: list[dict] = []  # {"role": "seller"|"customer", "text": ...}

    def _answer(self, max_new_tokens: int, temperature: float) -> str:
        example = conversation(self.responder, self.system, self.turns)
        return reply(self.responder, example, Sampling(max_new_tokens, temperature)).text

    def reply(self, seller_text: str, max_new_tokens: int = 64, temperature: float = 0.0) -> str:
        """The customer's answer to the seller's line; both are added to the conversation."""
        self.turns.append({"role": "seller", "text": seller_text})
        try:
            answer = self._answer(max_new_tokens, temperature)
        except BaseException:
            self.turns.pop()
            raise
        self.turns.append({"role": "customer", "text": answer})
        return answer

    def opening(self, max_new_tokens: int = 64, temperature: float = 0.0) -> str:
        """The customer's first line when the phone is answered (the model's opening prompt stands in for the
        seller, as in training)."""
        if self.turns:
            raise ValueError("the call has already started")
        if not self.responder.split.opening_prompt:
            raise ValueError("no opening prompt is set: the seller speaks first")
        answer = self._answer(max_new_tokens, temperature)
        self.turns.append({"role": "customer", "text": answer})
        return answer


def repl(session: ChatSession, seller_first: bool = False, read: Callable[[str], str] = input,
         out: TextIO | None = None, max_new_tokens: int = 64) -> None:
    """The terminal loop: readline line editing when the terminal has it; lines typed while the customer is
    answering are dropped, not taken as the next seller lines."""
    try:
        import readline  # noqa: F401 (importing it gives input() line editing and history)
    except ImportError:
        pass
    out = out or sys.stdout

    def start() -> None:
        if not seller_first and session.responder.split.opening_prompt:
            print(f"customer> {session.opening(max_new_tokens)}", file=out)

    print("You are the seller; /help for commands.", file=out)
    start()
    while True:
        try:
            line = read("seller> ").strip()
        except EOFError:
            print(file=out)
            return
        if line in ("/quit", "/exit"):
            return
        if line == "/help":
            print(HELP, file=out)
        elif line == "/reset":
            session.turns = []
            print("-- new call --", file=out)
            start()
        elif line.startswith("/"):
            print(f"unknown command {line.split()[0]}; /help lists them", file=out)
        elif line:
            print(f"customer> {session.reply(line, max_new_tokens)}", file=out)
            _drop_typed_ahead()


def _drop_typed_ahead() -> None:
    """Discard what was typed on the terminal while the reply was generated."""
    if sys.stdin.isatty():
        import termios

        termios.tcflush(sys.stdin, termios.TCIFLUSH)
