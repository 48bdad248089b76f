"""Error analysis on constructed predictions: each category flags what its rule says and leaves the look-alikes
that a real customer says alone; the worst examples per metric."""
import math

import pytest

from calltune.evaluation.error_analysis import CATEGORIES, analyze

ENGLISH_TARGETS = ["I do not want a higher limit, thank you.", "That is too expensive for me, sorry.",
                   "No thanks, I already have insurance."]


def row(i, reply, target="I do not want a higher limit, thank you.", seller="Would you like a higher limit?",
        history=()):
    lines = ["system: You are Ana, a busy customer.", *(f"{r}: {t}" for r, t in history), f"seller: {seller}"]
    return {"example_id": f"e{i}", "instructions": "\n".join(lines), "target_responses": target,
            "candidate_responses": reply, "model_id": "m", "model_sha": "s", "call_id": f"c{i}", "turn_index": 1}


def flagged(rows, category, scores=None):
    result = analyze(rows, scores or {})["categories"][category]
    assert result["rule"] == CATEGORIES[category]
    return {rows[int(i[1:])]["candidate_responses"] for i in result["example_ids"]} if result["checked"] else None


def test_empty_or_very_short_replies_but_not_short_answers_to_short_questions():
    rows = [row(0, ""), row(1, " ... "), row(2, "Sim"),                              # flagged
            row(3, "No.", target="No."), row(4, "Not now.", target="Not now, thanks."),  # short real reply too
            row(5, "No, I am fine with my current limit.")]
    assert flagged(rows, "empty_or_short") == {"", " ... ", "Sim"}


def test_wrong_language_against_the_test_sets_language_and_never_on_short_replies():
    rows = [row(0, "Não tenho interesse, obrigado.", target=ENGLISH_TARGETS[0]),      # Portuguese: flagged
            row(1, "Não, obrigado, estou dirigindo agora.", target="Yes."),           # expected: the set's language
            row(2, "No, gracias.", target=ENGLISH_TARGETS[1]),                         # 2 words: not judged
            row(3, "That works, send me the details by email.", target=ENGLISH_TARGETS[2]),
            row(4, "Hello hello hello hello", target=ENGLISH_TARGETS[0])]              # unclear language: not flagged
    assert flagged(rows, "wrong_language") == {rows[0]["candidate_responses"], rows[1]["candidate_responses"]}

    portuguese = ["Não tenho interesse, obrigado.", "Agora não posso falar, estou dirigindo.",
                  "Pode me ligar amanhã de manhã?"]
    rows = [row(i, r, target=t) for i, (r, t) in enumerate(zip(portuguese, reversed(portuguese)))]
    rows.append(row(3, "I am not sure about that price.", target=portuguese[0]))
    assert flagged(rows, "wrong_language") == {"I am not sure about that price."}


def test_wrong_language_is_not_checked_when_no_real_reply_shows_the_language():
    rows = [row(0, "Não tenho interesse, obrigado.", target="No."), row(1, "Yes.", target="Yes, sure.")]
    result = analyze(rows, {})["categories"]["wrong_language"]
    assert result["checked"] is False and "not checked" in result["note"] and "count" not in result


def test_repetition_is_a_loop_not_a_customer_repeating_once():
    rows = [row(0, "I am not interested I am not interested I am not interested"),
            row(1, "Hello hello hello hello"),
            row(2, "I don't know, I don't know."),   # said twice: 3 of 7 bigrams repeat, under half
            row(3, "No no no"),                      # under 4 words
            row(4, "No thanks, I already have insurance with another company.")]
    assert flagged(rows, "repetition") == {rows[0]["candidate_responses"], "Hello hello hello hello"}


def test_seller_line_is_a_seller_label_or_a_copy_of_a_seller_line():
    seller = "Do you have a minute to talk about insurance?"
    rows = [row(0, "Seller: we have a great offer for you today", seller=seller),
            row(1, "USER: can I interest you in our premium plan?", seller=seller),
            row(2, "Do you have a minute to talk about insurance", seller=seller),       # the seller's own line
            row(3, "Our plan costs fifty a month.", seller=seller,                      # an earlier seller line
                history=[("seller", "Our plan costs fifty a month."), ("customer", "Okay.")]),
            # Look-alikes a customer says: echoing the question, a customer label, a user mentioned mid-sentence
            row(4, "Yes, we can schedule a call for Friday.", seller="Can we schedule a call for Friday?",
                target="Friday at ten works for me."),
            row(5, "Customer: not really, I am driving.", seller=seller),
            row(6, "The user manual said: call the seller.", seller=seller),
            row(7, "Do you have a minute? I am busy.", seller=seller, target="Do you have a minute? I am busy.")]
    assert flagged(rows, "seller_line") == {r["candidate_responses"] for r in rows[:4]}


def test_off_persona_needs_the_judge_and_uses_the_documented_cut_off():
    rows = [row(i, f"reply number {i} is fine") for i in range(5)]
    assert analyze(rows, {})["categories"]["off_persona"] == {
        "rule": CATEGORIES["off_persona"], "checked": False, "note": "not checked: the judge is off (judge.backend)"}
    persona = {"persona_fidelity": [1, 2, 3, None, 5]}  # None: unjudged or unparseable, never counted
    result = analyze(rows, persona)["categories"]["off_persona"]
    assert result["count"] == 2 and result["example_ids"] == ["e0", "e1"] and result["share"] == 0.4


def test_counts_shares_and_example_ids():
    rows = [row(i, "") for i in range(7)] + [row(7, "No, I am fine with my current limit.")]
    result = analyze(rows, {})["categories"]["empty_or_short"]
    assert result["count"] == 7 and result["share"] == pytest.approx(7 / 8)
    assert result["example_ids"] == ["e0", "e1", "e2", "e3", "e4"]  # a few, not all
    assert analyze([], {})["categories"]["repetition"] == {"rule": CATEGORIES["repetition"], "checked": True,
                                                           "count": 0, "share": 0.0, "example_ids": []}


def test_worst_examples_per_metric_lowest_first_without_missing_values():
    rows = [row(i, f"reply {i}", seller=f"seller line {i}") for i in range(5)]
    scores = {"rouge_l": [0.9, 0.1, 0.5, 0.3, 0.7], "accuracy": [0.5, None, math.nan, 0.2, 1.0],
              "cross_encoder": [0.2, 0.2, 0.9, 0.1, 0.8]}
    worst = analyze(rows, scores, worst=2)["worst"]
    assert [w["example_id"] for w in worst["rouge_l"]] == ["e1", "e3"]
    assert [w["example_id"] for w in worst["accuracy"]] == ["e3", "e0"]  # unscored rows are not "worst"
    assert [w["example_id"] for w in worst["cross_encoder"]] == ["e3", "e0"]  # ties keep the test order
    assert worst["rouge_l"][0] == {"example_id": "e1", "score": 0.1, "seller": "seller line 1",
                                   "target": rows[1]["target_responses"], "reply": "reply 1"}
    assert analyze(rows, scores, worst=0)["worst"]["rouge_l"] == []
