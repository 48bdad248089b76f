"""The LLM judge through the real `openai` client against a loopback OpenAI-compatible fake."""
import json
import logging
import math

import pytest

from calltune.config import JudgeConfig
from calltune.evaluation.judge import CRITERIA, judge, make_judge, parse

from fakes.openai_compat import FakeOpenAI

pytest.importorskip("openai")

KEY = "sk-test-judge-key-123"
ROWS = [{"instructions": f"system: You are Ana, a busy customer.\nseller: Hi, is this Ana? ({i})",
         "candidate_responses": f"Yes, who is calling? ({i})", "target_responses": "Yes.", "example_id": f"e{i}"}
        for i in range(6)]


def answer(persona, realism, rationale="Stays in character and sounds natural."):
    return json.dumps({"rationale": rationale, "persona_fidelity": persona, "realism": realism})


@pytest.fixture
def cfg(monkeypatch):
    monkeypatch.setenv("CALLTUNE_TEST_JUDGE_KEY", KEY)
    return lambda fake, **kw: JudgeConfig(backend="openai", model="judge-1", base_url=f"{fake.endpoint}/v1",
                                          api_key_env="CALLTUNE_TEST_JUDGE_KEY", max_concurrency=1,
                                          retry_backoff_s=0.01, **kw)


def test_scores_are_averaged_and_unparseable_answers_counted_not_zeroed(cfg, caplog):
    replies = [answer(5, 4), answer(3, 2),
               "I think it is a 4.",                                    # no JSON: both criteria unreadable
               answer(7, 3),                                            # persona out of range: realism still counts
               "```json\n" + answer("4", 5) + "\n```",                  # fenced, digit string
               json.dumps({"persona_fidelity": 5, "realism": 5})]       # no rationale: not a judgment
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(api_key=KEY, replies=replies) as fake:
        c = cfg(fake)
        result = judge(ROWS, make_judge(c), seed=3, samples=200)
        bodies = fake.bodies()
    assert result["requests"] == 6 and result["failed"] == 0
    assert result["unparseable"] == {"persona_fidelity": 3, "realism": 2}
    assert result["persona_fidelity"].value == pytest.approx((5 + 3 + 4) / 3) and result["persona_fidelity"].n == 3
    assert result["realism"].value == pytest.approx((4 + 2 + 3 + 5) / 4) and result["realism"].n == 4
    assert result["realism"].low <= result["realism"].value <= result["realism"].high
    # The judge saw the persona, the conversation and the reply, and was asked for the rationale first.
    prompt = bodies[0]["messages"][-1]["content"]
    assert "You are Ana, a busy customer." in prompt and "seller: Hi, is this Ana? (0)" in prompt
    assert "Yes, who is calling? (0)" in prompt
    assert prompt.index('"rationale"') < prompt.index('"persona_fidelity"') < prompt.index('"realism"')
    assert bodies[0]["temperature"] == 0 and bodies[0]["seed"] == 3
    assert KEY not in caplog.text


def test_a_failed_request_is_counted_and_left_out(cfg):
    with FakeOpenAI(api_key=KEY, replies=[answer(4, 4)] * 3) as fake:
        fake.fail_when(lambda body: "(1)" in body["messages"][-1]["content"], 503)  # fails on every retry
        fake.inject(429)  # the first request is retried once, then answered
        c = cfg(fake, max_retries=2)
        result = judge(ROWS[:3], make_judge(c), samples=50)
    assert result["failed"] == 1 and result["unparseable"] == {"persona_fidelity": 0, "realism": 0}
    assert result["persona_fidelity"].value == 4 and result["persona_fidelity"].n == 2


def test_a_judge_that_never_answers_fails_loudly(cfg):
    with FakeOpenAI(api_key="another-key") as fake:  # 401 for our key: not retried
        c = cfg(fake)
        with pytest.raises(RuntimeError, match="every one of 2 requests failed"):
            judge(ROWS[:2], make_judge(c))


def test_off_unless_configured(monkeypatch):
    assert make_judge(JudgeConfig()) is None
    with pytest.raises(ValueError, match="judge.model"):
        make_judge(JudgeConfig(backend="openai"))
    monkeypatch.delenv("NO_SUCH_JUDGE_KEY", raising=False)
    with pytest.raises(ValueError, match="judge.api_key_env"):
        make_judge(JudgeConfig(backend="openai", model="m", api_key_env="NO_SUCH_JUDGE_KEY"))


@pytest.mark.parametrize("text", ["", "5", "{}", '{"rationale": "ok", "persona_fidelity": 0, "realism": 6}',
                                  '{"rationale": "ok", "persona_fidelity": true, "realism": 2.5}'])
def test_parse_refuses_what_is_not_a_1_to_5_score(text):
    assert parse(text) == dict.fromkeys(CRITERIA)


def test_nan_when_nothing_could_be_read(cfg):
    with FakeOpenAI(api_key=KEY, replies=["no idea"] * 2) as fake:
        c = cfg(fake)
        result = judge(ROWS[:2], make_judge(c), samples=50)
    assert result["unparseable"] == {"persona_fidelity": 2, "realism": 2}
    assert math.isnan(result["realism"].value) and result["realism"].n == 0
