"""The company's scorecard, learned from its own graded calls (the seed export's evaluation columns), or given.

A graded call (calltune.conversation.schema.Evaluation) holds one feedback per criterion, each with yes/no checklist
items. `derive` gathers them: the criteria and their items (titles normalised, so variants of one title, damaged by
mojibake or spelled with other accents or case, count as one), the grade scale and its distribution, a few of the
export's own summaries per criterion (from training calls only) and, for the judge's prompt, two graded training
calls with the export's answer. `load_scorecard` reads one a user wrote (`coach.scorecard`, YAML or JSON), for data
without grades; its names match the export's by the same normalisation, in either language.
"""
from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from calltune.conversation.schema import Call
from calltune.core.text import repair_text
from calltune.data.formats.seed_csv import GRADE_RANGE

FEW_SHOT_TURNS = 16      # turns of each few-shot call shown to the judge
FEW_SHOT_CHARS = 300     # characters of each of those turns


class ScorecardError(ValueError):
    pass


def normalise(text: str) -> str:
    """The key two spellings of one title share: repaired, accents and punctuation dropped, case folded."""
    decomposed = unicodedata.normalize("NFKD", repair_text(text))
    return "".join(ch for ch in decomposed.casefold() if ch.isalnum())


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Item(_Model):
    name: str = Field(min_length=1, description="The checklist item as the coach shows it.")
    original: str = Field("", description="The item as the export names it (before translation).")

    def keys(self) -> set[str]:
        return {normalise(n) for n in (self.name, self.original) if n}


class Example(_Model):
    """The export's own summary of a criterion on a graded training call."""
    call_id: str
    grade: float
    summary: str
    summary_original: str = ""


class Criterion(_Model):
    title: str = Field(min_length=1)
    original: str = ""
    items: list[Item] = Field(default_factory=list)
    examples: list[Example] = Field(default_factory=list)

    @field_validator("items", mode="before")
    @classmethod
    def _plain_names(cls, items):  # a hand-written scorecard may list items as plain strings
        return [{"name": i} if isinstance(i, str) else i for i in items or []]

    def keys(self) -> set[str]:
        return {normalise(n) for n in (self.title, self.original) if n}


class Scorecard(_Model):
    source: Literal["derived", "file"] = "file"
    criteria: list[Criterion] = Field(default_factory=list, description="empty: graded calls without a checklist")
    grade_min: float = GRADE_RANGE[0]
    grade_max: float = GRADE_RANGE[1]
    distribution: dict[str, int] = Field(default_factory=dict, description="grade -> graded calls")
    graded_calls: int = 0
    few_shot: list[dict] = Field(default_factory=list, description="graded training calls shown to the judge: "
                                                                   "{call_id, turns, answer}")

    def save(self, path: Path) -> None:
        from calltune.core.io import write_json

        write_json(path, self.model_dump())


def feedbacks(call: Call) -> list[tuple[dict, dict]]:
    """(shown, original) per criterion of a graded call: the translated feedback beside the export's own."""
    shown = call["evaluation"]["feedbacks"]
    original = (call.get("evaluation_original") or call["evaluation"])["feedbacks"]
    return list(zip(shown, original))


def labels(call: Call, scorecard: Scorecard) -> dict[tuple[int, int], bool]:
    """(criterion index, item index) -> the export's yes/no for the scorecard's items this graded call grades."""
    out = {}
    for shown, original in feedbacks(call):
        names = {normalise(shown["title"]), normalise(original["title"])}
        for ci, criterion in enumerate(scorecard.criteria):
            if not names & criterion.keys():
                continue
            for item_shown, item_original in zip(shown["checklist"], original["checklist"]):
                names_i = {normalise(item_shown["type"]), normalise(item_original["type"])}
                for ii, item in enumerate(criterion.items):
                    if names_i & item.keys():
                        out[(ci, ii)] = item_shown["status"]
    return out


def criterion_summaries(call: Call, scorecard: Scorecard) -> dict[int, tuple[str, str]]:
    """criterion index -> (summary, the export's original) of a graded call's feedback."""
    out = {}
    for shown, original in feedbacks(call):
        names = {normalise(shown["title"]), normalise(original["title"])}
        for ci, criterion in enumerate(scorecard.criteria):
            if names & criterion.keys() and shown["summary"]:
                out[ci] = (shown["summary"], original["summary"])
    return out


def _commonest(counter: Counter) -> str:
    return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0] if counter else ""


def _spread(calls: list[Call], k: int) -> list[Call]:
    """k calls spread over the grades: the lowest, the highest and evenly between (by call id among equals)."""
    ranked = sorted(calls, key=lambda c: (c["evaluation"]["grade"], c["call_id"]))
    if len(ranked) <= k:
        return ranked
    if k == 1:
        return [ranked[len(ranked) // 2]]
    return [ranked[round(i * (len(ranked) - 1) / (k - 1))] for i in range(k)]


def answer_of(call: Call) -> dict:
    """The export's grading of a call in the shape the judge answers (calltune.coaching.review)."""
    ev = call["evaluation"]
    return {"overview": ev["overview"], "positive": ev["positive"], "negative": ev["negative"],
            "feedbacks": [{"title": f["title"], "summary": f["summary"], "checklist": f["checklist"]}
                          for f in ev["feedbacks"]], "grade": ev["grade"]}


def derive(graded: list[Call], train_ids: set[str], *, given: Scorecard | None = None, examples_per_criterion: int = 3,
           few_shot: int = 2) -> Scorecard:
    """The scorecard of these graded calls (or `given`, a user's, matched to them); its examples and few-shot calls
    come from the calls in `train_ids` only."""
    card = given.model_copy(deep=True) if given else Scorecard(source="derived", criteria=_criteria(graded))
    card.graded_calls = len(graded)
    card.distribution = {f"{g:g}": n for g, n in sorted(Counter(c["evaluation"]["grade"] for c in graded).items())}
    train = [c for c in graded if c["call_id"] in train_ids]
    for ci, criterion in enumerate(card.criteria):
        criterion.examples = []
        with_summary = [c for c in train if ci in criterion_summaries(c, card)]
        for call in _spread(with_summary, examples_per_criterion):
            summary, original = criterion_summaries(call, card)[ci]
            criterion.examples.append(Example(call_id=call["call_id"], grade=call["evaluation"]["grade"],
                                              summary=summary, summary_original=original))
    card.few_shot = [{"call_id": c["call_id"], "answer": answer_of(c),
                      "turns": [{"role": t["role"], "text": t["text"][:FEW_SHOT_CHARS]}
                                for t in c["turns"][:FEW_SHOT_TURNS] if t["text"]]}
                     for c in _spread(train, few_shot)]
    return card


def _criteria(graded: list[Call]) -> list[Criterion]:
    """Every criterion and item of the graded calls, in order of first appearance, each under its commonest names."""
    titles: dict[str, tuple[Counter, Counter]] = {}
    items: dict[str, dict[str, tuple[Counter, Counter]]] = {}
    for call in graded:
        for shown, original in feedbacks(call):
            key = normalise(original["title"])
            t_shown, t_original = titles.setdefault(key, (Counter(), Counter()))
            t_shown[shown["title"]] += 1
            t_original[original["title"]] += 1
            for i_shown, i_original in zip(shown["checklist"], original["checklist"]):
                names = items.setdefault(key, {}).setdefault(normalise(i_original["type"]), (Counter(), Counter()))
                names[0][i_shown["type"]] += 1
                names[1][i_original["type"]] += 1
    return [Criterion(title=_commonest(shown), original=_commonest(original),
                      items=[Item(name=_commonest(a), original=_commonest(b)) for a, b in items.get(key, {}).values()])
            for key, (shown, original) in titles.items()]


def load_scorecard(path: str | Path) -> Scorecard:
    """A user's scorecard (YAML or JSON): {criteria: [{title, items: [names]}], grade_min?, grade_max?}."""
    path = Path(path).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML reads JSON too
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ScorecardError(f"coach.scorecard {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise ScorecardError(f"coach.scorecard {path}: expected a mapping with `criteria`, found {type(data).__name__}")
    try:
        card = Scorecard.model_validate({**data, "source": "file"})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ScorecardError(f"coach.scorecard {path}: {where}: {first['msg']} ({exc.error_count()} problem(s))") from None
    if not card.criteria:
        raise ScorecardError(f"coach.scorecard {path}: no criteria")
    if card.grade_min >= card.grade_max:
        raise ScorecardError(f"coach.scorecard {path}: grade_min {card.grade_min:g} is not below grade_max "
                             f"{card.grade_max:g}")
    return card


def read_scorecard(path: str | Path) -> Scorecard:
    """A scorecard.json the coach step wrote."""
    return Scorecard.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
