"""The data contracts between steps (see README "Data contracts"). Plain dicts on the hot path."""
from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

Role = Literal["seller", "customer"]


class Turn(TypedDict):
    role: Role
    text: str
    text_original: NotRequired[str]  # set by translate: the untranslated text


class ChecklistItem(TypedDict):
    type: str                # the item, e.g. "Asked whether the customer has time"
    status: bool             # the grader's yes or no


class Feedback(TypedDict):
    """One criterion of the company's scorecard, as its export grades a call."""
    title: str
    summary: str
    checklist: list[ChecklistItem]


class Evaluation(TypedDict):
    """The seed export's evaluation columns of a graded call (texts repaired like the turns)."""
    grade: float             # 0-10
    overview: str
    positive: str
    negative: str
    feedbacks: list[Feedback]


class Call(TypedDict):
    """One line of calls.jsonl."""
    call_id: str
    source_row: int          # 1-based row/line/record number in the input file
    persona: dict[str, str]
    system: str              # system instruction rendered from the persona
    turns: list[Turn]
    system_original: NotRequired[str]               # set by translate when translate.fields has system
    persona_original: NotRequired[dict[str, str]]   # set by translate: the untranslated persona values it translated
    evaluation: NotRequired[Evaluation]             # seed_csv with evaluation columns: the export's grading
    evaluation_original: NotRequired[Evaluation]    # set by translate when translate.fields has evaluation
    evaluation_problem: NotRequired[str]            # why a row's evaluation columns were left out (the coach counts it)


class Example(TypedDict):
    """One line of examples.jsonl: the customer reply `target` follows the seller's `prompt`."""
    example_id: str          # f"{call_id}:{turn_index}"
    call_id: str
    turn_index: int          # index of the target turn in the call's merged turns
    system: str
    history: list[Turn]      # earlier turns, oldest first
    prompt: str              # the seller turn just before the target (or the opening prompt)
    target: str              # the customer turn
    end_of_call: NotRequired[str]  # the call's closing customer turn: the marker the reply ends with (split.end_of_call)
