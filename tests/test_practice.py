"""The practice page's server side without a browser: personas read back from what ingest rendered, the judge's
review (through the real openai client against a loopback fake), the coach's review and the practice history, the
API key on the page's endpoints, and a page that loads nothing from elsewhere."""
import json
import re
from importlib import resources

import httpx
import pytest

from calltune.apps.practice import persona_fields, template_fields
from calltune.apps.serve.app import serving
from calltune.coaching.review import ReviewError, parse
from calltune.config import Config, DataConfig
from calltune.data.ingest import ingest
from calltune.release.deploy import deploy

from conftest import SCORECARD
from fakes.openai_compat import FakeOpenAI

TEMPLATES = [DataConfig().system_prompt,
             "You are {character} ({company}).  A {meeting_type} call;\n{character} is busy.",
             "{character}"]
PERSONAS = [{"character": "Beatriz Almeida", "meeting_type": "FirstContact", "company": "Vértice"},
            {"character": "João", "meeting_type": "", "company": "NetVale Fibra"},
            {"character": "Ana, a nurse", "meeting_type": "Follow Up", "company": ""}]


@pytest.mark.parametrize("template", TEMPLATES)
def test_persona_fields_are_read_back_from_the_instructions_ingest_rendered(template, tmp_path):
    calls = tmp_path / "calls.jsonl"
    calls.write_text("".join(json.dumps({"call_id": str(i), "persona": p, "turns": [{"role": "bot", "text": "Hi"}]})
                             + "\n" for i, p in enumerate(PERSONAS)), encoding="utf-8")
    ingest(calls, tmp_path / "out.jsonl", tmp_path / "q.jsonl", DataConfig(format="calls_jsonl", system_prompt=template))
    rendered = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    fields = template_fields(template)
    for persona, call in zip(PERSONAS, rendered):
        assert persona_fields(template, call["system"]) == {f: persona[f] for f in fields}
    assert persona_fields(TEMPLATES[0], "You are a customer.") == {}  # another template's instruction: no fields


def test_a_review_is_the_judges_own_or_none():
    good = {"rationale": "Asked for time first.", "overview": "Short.", "positive": "Polite.", "negative": "No next step.",
            "grade": "7"}
    assert parse("```json\n" + json.dumps(good) + "\n```") == {**good, "grade": 7}
    for bad, message in [({**good, "rationale": " "}, "no rationale"), ({**good, "grade": 11}, "grade 11"),
                         ({**good, "grade": True}, "grade True"), ({k: v for k, v in good.items() if k != "negative"},
                                                                   "no negative")]:
        with pytest.raises(ReviewError, match=message):
            parse(json.dumps(bad))
    with pytest.raises(ReviewError, match="JSON object"):
        parse("Grade: 7/10")


@pytest.fixture
def served(tiny_chat_model, tmp_path, monkeypatch):
    """`calltune serve` with the page, an API key and a judge behind the real openai client."""
    pytest.importorskip("openai")
    monkeypatch.setenv("CALLTUNE_API_KEY", "pk-key")
    monkeypatch.setenv("PRACTICE_JUDGE_KEY", "sk-judge")
    with FakeOpenAI(api_key="sk-judge") as judge:
        cfg = Config(state_dir=str(tmp_path / "state"),
                     judge={"backend": "openai", "model": "judge-1", "base_url": f"{judge.endpoint}/v1",
                            "api_key_env": "PRACTICE_JUDGE_KEY", "max_retries": 1, "retry_backoff_s": 0.01})
        deploy(tiny_chat_model, cfg.deploy, cfg.state_path(), run_id="run-1", metrics={})
        with serving(cfg.serve.model_copy(update={"port": 0}), cfg.deploy, cfg.state_path(), cfg.split,
                     page=cfg) as url:
            yield url, judge, tmp_path


CALL = {"call_id": "practice-1", "persona": {}, "system": "You are Ana.",
        "turns": [{"role": "customer", "text": "Hello?"}, {"role": "seller", "text": "Hi Ana, it is Bruno."}]}


def test_the_page_is_public_and_its_endpoints_need_the_api_key(served):
    url, _, tmp_path = served
    with httpx.Client(base_url=url) as client:
        page = client.get("/")
        assert page.status_code == 200 and "Content-Security-Policy" in page.headers
        assert client.get("/practice/api/setup").status_code == 401
        assert client.post("/practice/api/review", json=CALL).status_code == 401
        assert client.get("/practice/index.htm").status_code == 404  # only the page's own files
        setup = client.get("/practice/api/setup", headers={"Authorization": "Bearer pk-key"})
        assert setup.status_code == 200
        body = setup.text
        assert setup.json()["version"] == 1 and setup.json()["judge"] == "openai:judge-1"
        assert str(tmp_path) not in body and "file:" not in body and "sk-judge" not in body


def test_the_judge_reviews_the_seller_or_the_page_is_told_why_not(served):
    url, judge, _ = served
    auth = {"Authorization": "Bearer pk-key"}
    with httpx.Client(base_url=url, headers=auth, timeout=60) as client:
        judge.replies.extend(['{"rationale": "Named himself.", "overview": "An opening.", "positive": "Clear.", '
                              '"negative": "No question.", "grade": 5}', "I think it was fine."])
        assert client.post("/practice/api/review", json=CALL).json() == {
            "rationale": "Named himself.", "overview": "An opening.", "positive": "Clear.", "negative": "No question.",
            "grade": 5}
        prompt = judge.bodies()[-1]["messages"][-1]["content"]
        assert "You are Ana." in prompt and "customer: Hello?\nseller: Hi Ana, it is Bruno." in prompt
        unreadable = client.post("/practice/api/review", json=CALL)
        assert unreadable.status_code == 502
        assert unreadable.json()["error"]["message"] == "the judge did not answer with a JSON object"
        judge.inject(500, 500)  # fails after its one retry
        failed = client.post("/practice/api/review", json=CALL)
        assert failed.status_code == 502 and failed.json()["error"]["message"].startswith("the judge did not answer")
        assert client.post("/practice/api/review", json={**CALL, "turns": []}).status_code == 400


def test_the_page_loads_nothing_from_elsewhere():
    static = resources.files("calltune.apps") / "static" / "practice"
    for name in ("index.html", "practice.js", "practice.css"):
        text = (static / name).read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
        assert "@import" not in text and "innerHTML" not in text, name


@pytest.fixture
def coached(tiny_chat_model, coach_dir, tmp_path, monkeypatch):
    """`calltune serve` of a model that carries a coach (coach/ in its folder), with an API key and a judge."""
    import shutil

    from calltune.release.model_card import COACH_DIR

    pytest.importorskip("openai")
    model = tmp_path / "model"
    shutil.copytree(tiny_chat_model, model)
    shutil.copytree(coach_dir, model / COACH_DIR)
    monkeypatch.setenv("CALLTUNE_API_KEY", "pk-key")
    monkeypatch.setenv("PRACTICE_JUDGE_KEY", "sk-judge")
    with FakeOpenAI(api_key="sk-judge") as judge:
        cfg = Config(state_dir=str(tmp_path / "state"),
                     judge={"backend": "openai", "model": "judge-1", "base_url": f"{judge.endpoint}/v1",
                            "api_key_env": "PRACTICE_JUDGE_KEY", "max_retries": 0})
        deploy(model, cfg.deploy, cfg.state_path(), run_id="run-1", metrics={})
        with serving(cfg.serve.model_copy(update={"port": 0}), cfg.deploy, cfg.state_path(), cfg.split,
                     page=cfg) as url:
            yield url, judge


PRACTICE = {"call_id": "practice-0a1b", "system": "You are Ana.", "persona": {"character": "Ana"},
            "turns": [{"role": "customer", "text": "Hello?"},
                      {"role": "seller", "text": "Hi, this is Bruno from Acme. Do you have a minute to talk?"},
                      {"role": "customer", "text": "Yes."}]}


def test_a_finished_call_is_reviewed_and_filed_once_however_often_the_page_retries(coached):
    url, judge = coached
    with httpx.Client(base_url=url, headers={"Authorization": "Bearer pk-key"}, timeout=60) as client:
        assert client.get("/practice/api/setup").json()["coach"]["scorecard"] is True
        first = client.post("/practice/api/calls", json={**PRACTICE, "seller": "  Ana   Souza "})
        assert first.status_code == 200 and (first.json()["stored"], first.json()["created"]) == (True, True)
        review = first.json()["review"]
        assert [c["title"] for c in review["criteria"]] == ["Opening and rapport", "Qualifying", "Next steps"]
        assert review["criteria"][0]["items"][0]["evidence"][0]["turn"] == 1
        retried = client.post("/practice/api/calls", json={**PRACTICE, "seller": "Ana Souza"})
        assert (retried.json()["created"], retried.json()["review"]) == (False, review)  # the same call, once
        unnamed = client.post("/practice/api/calls", json=PRACTICE).json()
        assert unnamed["stored"] is False and unnamed["review"] == review

        answer = {"rationale": "Asked for time.", "overview": "Short.", "positive": "Asked.", "negative": "Stopped.",
                  "grade": 3, "feedbacks": [{"title": t, "summary": "x", "evidence": "Do you have a minute to talk?",
                                             "checklist": [{"type": i, "status": i.startswith("Asked whether")}
                                                           for i, _, _ in items]} for t, items in SCORECARD.items()]}
        judge.replies.append(json.dumps(answer))
        judged = client.post("/practice/api/review", json={**PRACTICE, "seller": "Ana Souza"}).json()
        assert [f["evidence_turn"] for f in judged["feedbacks"]] == [1, 1, 1]
        assert "Opening and rapport" in judge.bodies()[-1]["messages"][-1]["content"]  # the prompt is the scorecard's
        judge.replies.append(json.dumps(answer))  # a judge's review whose call was not saved first: saved with it
        client.post("/practice/api/review", json={**PRACTICE, "seller": "Bo", "call_id": "practice-2"})
        [bo] = client.get("/practice/api/history", params={"seller": "Bo"}).json()["calls"]
        assert (bo["call_id"], bo["judge_grade"], bo["grade"]) == ("practice-2", 3, review["grade"]["estimate"])

        history = client.get("/practice/api/history", params={"seller": "Ana Souza"}).json()
        [entry] = history["calls"]
        assert (entry["call_id"], entry["judge_grade"], entry["turns"]) == ("practice-0a1b", 3, 3)
        assert entry["grade"] == review["grade"]["estimate"] and entry["analytics"]["questions"] == 1
        assert "proves nothing" in history["notice"] and history["next"] is None

        silent = client.post("/practice/api/calls", json={**PRACTICE, "turns": PRACTICE["turns"][:1]})
        assert silent.status_code == 400 and "no seller turn" in silent.json()["error"]["message"]
        no_key = client.post("/practice/api/calls", json={**PRACTICE, "seller": "Ana", "call_id": ""})
        assert no_key.status_code == 400 and no_key.json()["error"]["param"] == "call_id"
        assert client.get("/practice/api/history", params={"seller": "Ana", "limit": 0}).status_code == 400
    with httpx.Client(base_url=url) as client:  # the history needs the API key like the rest of the API
        assert client.get("/practice/api/history", params={"seller": "Ana Souza"}).status_code == 401
        assert client.post("/practice/api/calls", json=PRACTICE).status_code == 401
