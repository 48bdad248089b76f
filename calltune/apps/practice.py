"""The practice page: a seller holds a call with the customer model in a browser, at `/` of `calltune serve`.

The page (calltune/apps/static/practice: plain HTML, CSS and JavaScript, nothing fetched from elsewhere) talks to the
server's own `/v1/chat/completions` with `stream=true` and to small JSON endpoints here:
- GET  /practice/api/setup: the served version, the customers to choose from and what the call needs;
- POST /practice/api/persona: a customer described by the seller, rendered into a system instruction;
- POST /practice/api/calls: the coach's offline review of a finished call (calltune.coaching.coach: the coach the
  served model carries, in its folder's coach/), and, under the signed-in seller's name (or, for the operator, the
  name typed), the call and its review stored in the practice history (calltune.coaching.history), once per call_id
  however often the page retries;
- POST /practice/api/review: the configured judge's review of the seller, in the served model's scorecard
  (calltune.coaching.review), attached to the stored call;
- GET  /practice/api/history: a seller's past calls with their grades and analytics, newest first, a page at a time:
  a seller's own only (another's: 403); a manager's, any seller's;
- GET  /practice/api/team: managers only: every seller's calls, grades and analytics over time and the checklist
  items each misses most, a page of sellers at a time.

The customers are the system instructions the served model was trained on (its model card's `personas`), each
sent back exactly as training rendered it; their fields (name, meeting type, ...) are read back through the
`data.system_prompt` template. A customer the seller describes is rendered by the same function ingest uses.
Nothing the page receives names a file, a secret's payload or a key: the served model is named by the secret and
version number only. Who is calling is calltune.apps.serve.auth's answer (a seller's key, IAP): a signed-in seller's
calls are filed under their name. Without sign-in (loopback, or the operator's shared key) a typed name files them,
and proves nothing: the page says so. A lost database connection is a 503 with Retry-After (the page keeps the call
and retries), and nothing a seller said reaches the server log.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from calltune.apps.serve.auth import Caller, caller
from calltune.apps.serve.protocol import ApiError
from calltune.apps.serve.watcher import Watcher
from calltune.backends.resources import is_vertex_model
from calltune.coaching.coach import Coach, CoachError
from calltune.coaching.history import KEY_CHARS, NAME_CHARS, PAGE, PracticeHistory, StoredCall, normal_name
from calltune.config import Config
from calltune.data.formats.base import persona_fields, template_fields
from calltune.release.model_card import COACH_DIR
from calltune.release.store import model_path_from_endpoint
from calltune.runtime.loading import read_model_card

log = logging.getLogger(__name__)

STATIC = resources.files("calltune.apps") / "static" / "practice"
FILES = {"": ("index.html", "text/html; charset=utf-8"),
         "practice.js": ("practice.js", "text/javascript; charset=utf-8"),
         "practice.css": ("practice.css", "text/css; charset=utf-8")}
# The page runs only its own files and talks only to this server.
HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                      "img-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
MAX_TEXT = 20_000  # characters of one field or turn the page may send
MAX_TURNS = 400
NAME_NOTICE = ("Your name only files your calls under it: it proves nothing about who you are. Without sign-in "
               "(serve.auth), anyone who can reach this server can read the history of any name.")
CALLER = Annotated[Caller, Depends(caller)]


def customers(card: dict | None, template: str, shown_fields: Sequence[str]) -> list[dict]:
    """The personas the model was trained on: {"label", "fields", "system", "examples"}, most used first."""
    card = card or {}
    recorded = card.get("personas") or ([{"system": card["system_prompt"], "examples": None}]
                                        if card.get("system_prompt") else [])
    out = []
    for persona in recorded:
        system = persona.get("system") or ""
        fields = persona_fields(template, system)
        label = " · ".join(fields[f] for f in shown_fields if fields.get(f)) or " ".join(system.split())[:80]
        out.append({"label": label, "fields": fields, "system": system, "examples": persona.get("examples")})
    return out


class PersonaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fields: dict[str, Annotated[str, Field(max_length=MAX_TEXT)]] = Field(max_length=64)


class Turn(BaseModel):
    role: Literal["seller", "customer"]
    text: str = Field(max_length=MAX_TEXT)


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the downloaded transcript may be sent as is
    system: str = Field("", max_length=MAX_TEXT)
    turns: list[Turn] = Field(min_length=1, max_length=MAX_TURNS)
    seller: str = Field("", max_length=NAME_CHARS, description="the name the call is filed under; empty: not stored")
    call_id: str = Field("", max_length=KEY_CHARS, description="the page's key of this call: a retry stores nothing twice")

    def stored_under(self, who: Caller) -> tuple[str, str] | None:
        """(seller, call_id) the call is filed under: the signed-in seller's own name (another's: 403), or for the
        operator the name typed (none: not stored)."""
        seller = normal_name(self.seller)
        if who.name:
            if seller and seller != who.name:
                raise ApiError(403, f"signed in as {who.name!r}: calls are filed under your own name only",
                               "permission_error", "forbidden", "seller")
            seller = who.name
        if not seller:
            return None
        if not self.call_id.strip():
            raise ApiError(400, "a call filed under a name needs its call_id (the key that makes a retry safe)",
                           param="call_id")
        return seller, self.call_id.strip()


class CallRequest(ReviewRequest):
    persona: dict[str, Annotated[str, Field(max_length=MAX_TEXT)]] = Field(default_factory=dict, max_length=64)
    served_by: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=16)


class Practice:
    """What the page's endpoints read: the config, the served model's card and coach (cached per endpoint), the judge,
    the practice history."""

    def __init__(self, cfg: Config, watcher: Watcher, history: PracticeHistory):
        self.cfg, self.watcher, self._history = cfg, watcher, history
        self._cards: dict[str, dict | None] = {}
        self._coaches: dict[str, Coach] = {}
        self._judge = None
        self._lock = threading.Lock()

    def card(self, endpoint: str) -> dict | None:
        if endpoint not in self._cards:
            self._cards[endpoint] = self._read_card(endpoint)
        return self._cards[endpoint]

    @staticmethod
    def _read_card(endpoint: str) -> dict | None:
        if is_vertex_model(endpoint):  # no card: the seller describes the customer
            return None
        try:
            return read_model_card(model_path_from_endpoint(endpoint))
        except (OSError, ValueError) as exc:  # logged for the operator; the page just offers no trained personas
            log.warning("practice: cannot read the served model's card: %s", type(exc).__name__)
            return None

    def coach(self, endpoint: str | None) -> Coach:
        """The coach the served model carries (its folder's coach/coach.json, models refitted once per endpoint);
        without one (an older model, a Vertex endpoint), the analytics alone, unplaced."""
        with self._lock:
            if endpoint not in self._coaches:
                self._coaches[endpoint] = self._read_coach(endpoint)
            return self._coaches[endpoint]

    @staticmethod
    def _read_coach(endpoint: str | None) -> Coach:
        if endpoint and not is_vertex_model(endpoint):
            try:
                path = model_path_from_endpoint(endpoint) / COACH_DIR / "coach.json"
                if path.is_file():
                    return Coach.load(path)
            except (OSError, ValueError) as exc:  # CoachError included: the review falls back to the analytics
                log.warning("practice: cannot read the served model's coach: %s", type(exc).__name__)
        return Coach(None, [])

    def history(self) -> PracticeHistory:
        return self._history

    def template(self, card: dict | None) -> str:
        return (card or {}).get("system_prompt_template") or self.cfg.data.system_prompt

    def opening_prompt(self, card: dict | None) -> str:
        split = (card or {}).get("split") or {}
        return split.get("opening_prompt", self.cfg.split.opening_prompt)

    def judge(self):
        from calltune.evaluation.judge import make_judge

        with self._lock:
            if self._judge is None:
                self._judge = make_judge(self.cfg.judge, self.cfg.state_path())
            return self._judge

    def served_card(self) -> tuple[int | None, dict | None]:
        served = self.watcher.current
        return (served.version, self.card(served.endpoint)) if served else (None, None)

    def file_call(self, body: CallRequest, who: Caller) -> tuple[dict, bool, bool]:
        """(the coach's review of a finished call, stored?, stored by this request?). Under a name the call is stored
        once per call_id, and a retry gets the review stored the first time."""
        version, coach = self.served_coach()
        turns = [t.model_dump() for t in body.turns]
        try:
            review = coach.review({"call_id": body.call_id, "turns": turns})
        except CoachError as exc:
            raise ApiError(400, str(exc), code="no_seller_turn", param="turns") from None
        where = body.stored_under(who)
        if where is None:
            return review, False, False
        call = {"system": body.system, "persona": body.persona, "turns": turns, "served_by": body.served_by,
                "label": " · ".join(v for v in body.persona.values() if v)}
        stored, created = self.history().add(*where, call, review, model_version=version,
                                             grade=review["grade"].get("estimate"))
        return stored.review, True, created

    def served_coach(self) -> tuple[int | None, Coach]:
        served = self.watcher.current
        return (served.version, self.coach(served.endpoint)) if served else (None, self.coach(None))

    def setup(self, who: Caller) -> dict:
        version, card = self.served_card()
        template = self.template(card)
        judge = self.cfg.judge
        coach = self.served_coach()[1]
        return {"model": self.cfg.deploy.secret_id, "version": version, "problem": self.watcher.problem if
                version is None else "",
                "customers": customers(card, template, self.cfg.data.persona_fields),
                "fields": template_fields(template), "opening_prompt": self.opening_prompt(card),
                "judge": f"{judge.backend}:{judge.model}" if judge.backend != "none" else None,
                "coach": {"scorecard": coach.scorecard is not None, "trained": bool(coach.records),
                          "notice": coach.notice(), "scale": [coach.scorecard.grade_min, coach.scorecard.grade_max]
                          if coach.scorecard else None},
                "caller": {"name": who.name or None, "manager": who.manager}, "auth": self.cfg.serve.auth,
                "name_notice": "" if who.name else NAME_NOTICE, "timeout_s": self.cfg.serve.request_timeout_s}


def history_entry(stored: StoredCall) -> dict:
    """A stored call as "My progress" lists it: when, with whom, the grades and the analytics (no transcript)."""
    review, judge = stored.review, stored.judge_review or {}
    return {"id": stored.id, "call_id": stored.call_id, "at": stored.created_at.isoformat(timespec="seconds"),
            "version": stored.model_version, "customer": stored.call.get("label") or stored.call.get("system", "")[:80],
            "turns": len(stored.call.get("turns", [])), "grade": review.get("grade", {}).get("estimate"),
            "grade_shown": review.get("grade", {}).get("shown"), "judge_grade": judge.get("grade"),
            "analytics": {a["metric"]: a["value"] for a in review.get("analytics", [])},
            "items": {f"{c['title']}: {i['name']}": i["verdict"] for c in review.get("criteria", [])
                      for i in c["items"] if i["verdict"] != "not judged"}}


def practice_routers(practice: Practice) -> tuple[APIRouter, APIRouter]:
    """(page, api): the page's files, public (they hold no data), and its JSON endpoints, to be included behind
    the API's key like /v1."""
    cfg = practice.cfg
    page, api = APIRouter(include_in_schema=False), APIRouter(prefix="/practice/api", tags=["practice page"])

    def static(name: str) -> Response:
        if name not in FILES:
            raise ApiError(404, f"no page file {name!r}", code="not_found")
        file, media_type = FILES[name]
        return Response((STATIC / file).read_bytes(), media_type=media_type, headers=HEADERS)

    page.add_api_route("/", lambda: static(""), methods=["GET"])
    page.add_api_route("/practice/{name}", static, methods=["GET"])

    @api.get("/setup")
    def setup(who: CALLER) -> dict:
        return practice.setup(who)

    @api.post("/persona")
    def persona(body: PersonaRequest) -> dict:
        from calltune.data.formats.base import render_system  # the very function ingest renders data.system_prompt with

        template = practice.template(practice.served_card()[1])
        unknown = sorted(set(body.fields) - set(template_fields(template)))
        if unknown:
            raise ApiError(400, f"unknown persona fields {unknown}: the template uses {template_fields(template)}",
                           param="fields")
        if not any(v.strip() for v in body.fields.values()):
            raise ApiError(400, "describe the customer: fill in at least one field", param="fields")
        fields = {k: " ".join(v.split()) for k, v in body.fields.items()}
        return {"system": render_system(template, tuple(fields.items())), "fields": fields}

    @api.post("/calls")
    def finished_call(body: CallRequest, who: CALLER) -> dict:
        review, stored, created = practice.file_call(body, who)
        # A retry gets the review stored the first time: the history holds one call, and the page shows it.
        return {"review": review, "stored": stored, **({"created": created} if stored else {})}

    @api.post("/review")
    def review(body: CallRequest, who: CALLER):
        from calltune.coaching.review import ReviewError, review_call

        if cfg.judge.backend == "none":
            raise ApiError(409, "no judge is configured (judge.backend is none), so there is no judge's review of this "
                                "call", code="no_judge")
        try:
            judge = practice.judge()
        except (ValueError, ImportError) as exc:  # e.g. the judge's key variable is not set: says which, not its value
            raise ApiError(503, f"the judge cannot be used: {exc}", "server_error", "judge_unavailable") from None
        where = body.stored_under(who)
        if where is not None:  # the call is in the history before its judge's review: never a review without a call
            practice.file_call(body, who)
        try:
            verdict = review_call(body.system, [t.model_dump() for t in body.turns], judge,
                                  practice.served_coach()[1].scorecard)
        except ReviewError as exc:
            raise ApiError(502, str(exc), "server_error", "judge_failed") from None
        if where is not None:
            practice.history().add_judge_review(*where, verdict)
        return verdict

    @api.get("/history")
    def history(who: CALLER, seller: Annotated[str, Query(max_length=NAME_CHARS)] = "",
                limit: Annotated[int, Query(ge=1, le=PAGE)] = PAGE, before: int | None = None) -> dict:
        name = normal_name(seller) or who.name
        if not name:
            raise ApiError(400, "name the seller whose calls to list", param="seller")
        if who.name and name != who.name and not who.manager:
            raise ApiError(403, f"signed in as {who.name!r}: a seller sees only their own calls", "permission_error",
                           "forbidden", "seller")
        rows = practice.history().list(name, limit=limit, before=before)
        return {"seller": name, "calls": [history_entry(r) for r in rows],
                "next": rows[-1].id if len(rows) == limit else None, "notice": "" if who.name else NAME_NOTICE}

    @api.get("/team")
    def team(who: CALLER, days: Annotated[int, Query(ge=1, le=3650)] = 90,
             limit: Annotated[int, Query(ge=1, le=PAGE)] = PAGE,
             after: Annotated[str, Query(max_length=NAME_CHARS)] = "") -> dict:
        if not who.manager:
            raise ApiError(403, "the team view is for managers (calltune users add NAME --manager)",
                           "permission_error", "forbidden")
        since = datetime.now(UTC) - timedelta(days=days)
        sellers = practice.history().team(since, limit=limit, after=normal_name(after))
        return {"since": since.isoformat(timespec="seconds"), "days": days, "sellers": sellers,
                "next": sellers[-1]["seller"] if len(sellers) == limit else None}

    return page, api


def mount_practice(app: FastAPI, cfg: Config, history: PracticeHistory, dependencies: Sequence = ()) -> None:
    """Serve the practice page at `/` of `calltune serve`'s app (its `state.watcher` says which model answers), its
    calls kept in `history`; `dependencies` (the sign-in) guard the page's JSON endpoints."""
    practice = Practice(cfg, app.state.watcher, history)
    page, api = practice_routers(practice)
    app.include_router(page)
    app.include_router(api, dependencies=list(dependencies))
