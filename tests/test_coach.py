"""The coach (calltune.coaching): the scorecard learned from the export's own grading, the analytics against
hand-computed values, the offline models with their figures beside baselines, the judge in the scorecard and its
calibration (a loopback judge), the coach step's bad input, and the practice history store."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from calltune.coaching.analytics import analyze, place
from calltune.coaching.coach import Coach, CoachError
from calltune.coaching.history import PAGE, SqlHistory, open_history
from calltune.coaching.review import ReviewError, build_request, calibrate, parse
from calltune.coaching.scorecard import ScorecardError, derive, labels, load_scorecard, normalise, read_scorecard
from calltune.coaching.step import build_coach
from calltune.config import CoachConfig, DataConfig, JudgeConfig
from calltune.core.io import read_jsonl
from calltune.data.ingest import bundled_sample_path, ingest
from calltune.release.model_card import COACH_DIR, write_model_card

from conftest import CUSTOMER_LINES, SCORECARD, write_examples, write_graded
from fakes.openai_compat import FakeOpenAI


def turns(*lines: tuple[str, str]) -> list[dict]:
    return [{"role": role, "text": text} for role, text in lines]


# Words counted by hand: 1 | 12 + 6 (one seller turn once joined) | 8 | 12 | 3 | 1 | 1 = 44, the seller's 31.
OBJECTIONS = turns(("customer", "Hello?"), ("seller", "Hi Ana, this is Bruno from Acme. Do you have a minute?"),
                   ("seller", "It is about your car insurance."), ("customer", "Well, I am not sure. It sounds expensive."),
                   ("seller", "I understand. Our plan costs less than yours, can I show you?"),
                   ("customer", "Hmm, no thanks."), ("seller", "Ok."), ("customer", "Bye."))
AGREED = turns(("seller", "Hello, is this Ana?"), ("customer", "Yes."),
               ("seller", "Can we schedule a call on Friday at ten?"), ("customer", "Sure, Friday works."))
DECLINED = AGREED[:3] + turns(("customer", "No, I can't on Friday."))


def test_the_analytics_of_a_call_are_the_hand_computed_values():
    a = analyze(OBJECTIONS)
    assert a["values"] == {"talk_ratio": 31 / 44, "longest_monologue": 18, "questions": 2, "objections": 2,
                           "objections_answered": 0.5, "next_step": 0.0, "call_words": 44, "call_turns": 7}
    # Evidence names the turns: the monologue starts at 1, the questions end turns 1 and 4, the objections are 3
    # ("Well, ...") and 5 ("Hmm, ..."), and only the first was answered (by 4; "Ok." is too short an answer).
    assert a["evidence"] == {"longest_monologue": [1], "questions": [1, 4], "objections": [3, 5],
                             "objections_answered": [4], "next_step": []}
    agreed = analyze(AGREED)
    assert agreed["values"]["next_step"] == 1.0 and agreed["evidence"]["next_step"] == [2, 3]
    assert agreed["values"]["talk_ratio"] == 13 / 17 and agreed["values"]["objections_answered"] is None
    assert analyze(DECLINED)["values"]["next_step"] == 0.0  # proposed, but the customer declined


def test_an_analytic_is_placed_among_the_training_sellers():
    share = place("talk_ratio", 0.5, [0.3, 0.4, 0.5, 0.6, 0.7])
    assert (share["shown"], share["percentile"], share["band"]) == ("50%", 50, "most sellers: 40-60%")
    count = place("questions", 3, [1, 2, 3, 5, 8])
    assert (count["percentile"], count["band"]) == (50, "most sellers: 2-5")
    agreed = place("next_step", 1.0, [0, 1, 1, 0])
    assert (agreed["shown"], agreed["percentile"], agreed["band"]) == \
        ("yes", 75, "50% of the training calls' sellers agreed one")
    assert place("objections_answered", None, [0.5, 1.0])["shown"] == "does not apply"
    assert place("questions", 3, [])["band"] == "no training calls to compare with"


def test_the_bundled_export_has_4_criteria_and_9_items_once_its_mojibake_variants_are_merged(tmp_path):
    raw = bundled_sample_path().read_text(encoding="utf-8")
    assert "ApresentaÃ§Ã£o Breve e Rapport" in raw and "Apresentação Breve e Rapport" in raw  # both spellings
    ingest(bundled_sample_path(), tmp_path / "calls.jsonl", tmp_path / "q.jsonl", DataConfig())
    graded = [c for c in read_jsonl(tmp_path / "calls.jsonl") if c.get("evaluation")]
    card = derive(graded, {c["call_id"] for c in graded})
    assert [c.original for c in card.criteria] == ["Apresentação Breve e Rapport", "Motivo da Ligação e Qualificar o "
                                                   "Cliente", "Mostrar uma Solução", "Próximos Passos e Reunião"]
    assert sum(len(c.items) for c in card.criteria) == 9
    assert "Propôs um próximo passo ou agendamento" in [i.original for c in card.criteria for i in c.items]
    assert sum(card.distribution.values()) == len(graded) and set(card.distribution) <= {str(g) for g in range(11)}
    assert all(len(c.examples) == 3 for c in card.criteria) and len(card.few_shot) == 2
    assert normalise("APRESENTACAO  breve e rapport!") == normalise("Apresentação Breve e Rapport")


SEED_HEADER = ["id", "transcription", "character", "meeting_type", "grade", "feedbacks", "overview", "positive",
               "negative"]
TRANSCRIPT = str([{"message": "Alô?", "role": "bot"}, {"message": "Oi, tem um minuto?", "role": "user"},
                  {"message": "Tenho.", "role": "bot"}])
FEEDBACK = str([{"title": "ApresentaÃ§Ã£o", "summary": "Bom.", "checklist": [{"type": "Perguntou", "status": True}]}])


def seed_csv(path: Path, rows: list[dict], header=SEED_HEADER) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k in header} for row in rows)
    return path


def test_rows_whose_evaluation_is_unusable_still_train_and_are_counted_out_of_the_coach(tmp_path):
    good = {"transcription": TRANSCRIPT, "grade": "7", "feedbacks": FEEDBACK, "overview": "{'summary': 'Ok.'}"}
    rows = [{**good, "id": "1"}, {**good, "id": "2", "grade": ""}, {**good, "id": "3", "grade": "11"},
            {**good, "id": "4", "feedbacks": "[{'title': 'x', 'checklist': [{'type': 'y', 'status': 'sim'}]}]"},
            {**good, "id": "5", "feedbacks": "[{'title': 'x'"}, {**good, "id": "6", "overview": "not a literal"}]
    report = ingest(seed_csv(tmp_path / "export.csv", rows), tmp_path / "calls.jsonl", tmp_path / "q.jsonl",
                    DataConfig())
    assert (report["calls"], report["quarantined"]) == (6, 0)  # every row is still a call for training
    calls = list(read_jsonl(tmp_path / "calls.jsonl"))
    assert calls[0]["evaluation"] == {"grade": 7, "overview": "Ok.", "positive": "", "negative": "", "feedbacks": [
        {"title": "Apresentação", "summary": "Bom.", "checklist": [{"type": "Perguntou", "status": True}]}]}
    assert [c.get("evaluation_problem") for c in calls[1:]] == [
        "grade: missing", "grade: 11 out of range 0-10",
        "feedbacks: criterion 1: checklist is not a list of {type, status: True/False}",
        "feedbacks: unreadable (not a literal)", "overview: unreadable (not a literal)"]
    write_examples(tmp_path / "train.examples.jsonl", [{"call_id": c["call_id"]} for c in calls])
    result = build_coach(tmp_path / "calls.jsonl", tmp_path, tmp_path / "coach", CoachConfig(bootstrap_samples=10))
    assert (result["graded"], result["left_out"]) == (1, 5)
    summary = json.loads((tmp_path / "coach" / "summary.json").read_text())
    assert summary["counts"]["left_out_by_reason"] == {
        "grade: missing": 1, "grade: out of range 0-10": 1,
        "feedbacks: criterion 1: checklist is not a list of {type, status: True/False}": 1,
        "feedbacks: unreadable": 1, "overview: unreadable": 1}
    # An export without evaluation columns: calls without an evaluation, and nothing counted as a problem.
    ingest(seed_csv(tmp_path / "plain.csv", rows[:1], ["id", "transcription"]), tmp_path / "plain.jsonl",
           tmp_path / "q2.jsonl", DataConfig())
    assert {"evaluation", "evaluation_problem"}.isdisjoint(next(read_jsonl(tmp_path / "plain.jsonl")))


def test_data_without_grades_gives_a_coach_of_the_analytics_alone(tmp_path):
    calls, splits = write_graded(tmp_path, n_train=10, n_test=4)
    plain = [{k: v for k, v in c.items() if k != "evaluation"} for c in read_jsonl(calls)]
    write_examples(calls, plain)
    result = build_coach(calls, splits, tmp_path / "coach", CoachConfig(bootstrap_samples=10))
    assert (result["graded"], result["criteria"]) == (0, 0)
    assert not (tmp_path / "coach" / "scorecard.json").exists()
    review = Coach.load(tmp_path / "coach" / "coach.json").review({"turns": AGREED})
    assert review["criteria"] == [] and review["grade"]["estimate"] is None
    assert "analytics alone" in review["notice"] and review["grade"]["why"] == "the training data had no grades"
    placed = {a["metric"]: a for a in review["analytics"]}
    assert placed["talk_ratio"]["band"].startswith("most sellers: ")  # placed among the 10 training sellers
    assert "analytics alone" in (tmp_path / "coach" / "report.md").read_text()


def test_a_user_scorecard_replaces_the_derived_one_and_bad_files_are_named(tmp_path):
    path = tmp_path / "scorecard.yaml"
    path.write_text("criteria:\n  - title: opening and rapport\n    items: [asked whether the customer has time]\n"
                    "  - title: Next steps\n    items: [Proposed a next step, Sent the contract]\n")
    given = load_scorecard(path)
    assert [i.name for c in given.criteria for i in c.items] == [
        "asked whether the customer has time", "Proposed a next step", "Sent the contract"]
    calls, splits = write_graded(tmp_path / "data", n_train=12, n_test=4)
    graded = list(read_jsonl(calls))
    card = derive(graded, {c["call_id"] for c in graded[:12]}, given=given)
    assert card.source == "file" and [c.title for c in card.criteria] == ["opening and rapport", "Next steps"]
    assert set(labels(graded[0], card)) == {(0, 0), (1, 0)}  # "Sent the contract" is in no graded call: no label
    assert {e.call_id for c in card.criteria for e in c.examples} <= {c["call_id"] for c in graded[:12]}
    # Data without grades and a given scorecard: the review lists its items, none judged, and no grade.
    write_examples(calls, [{k: v for k, v in c.items() if k != "evaluation"} for c in graded])
    build_coach(calls, splits, tmp_path / "coach", CoachConfig(scorecard=str(path), bootstrap_samples=10))
    review = review_call(Coach.load(tmp_path / "coach" / "coach.json"), "Do you have a minute to talk?")
    assert [c["title"] for c in review["criteria"]] == ["opening and rapport", "Next steps"]
    assert {i["why"] for c in review["criteria"] for i in c["items"]} == {"no labels to learn from in the training calls"}
    assert review["grade"] == {"estimate": None, "why": "no graded training call to learn a grade from"}
    assert "the scorecard below is the one given" in review["notice"]
    for text, message in [("criteria: []\n", "no criteria"), ("criteria:\n  - items: [x]\n", r"criteria\.0\.title"),
                          ("- a\n", "expected a mapping"), ("criteria: [\n", "cannot read it")]:
        path.write_text(text)
        with pytest.raises(ScorecardError, match=f"coach.scorecard {path}: .*{message}"):
            load_scorecard(path)


def review_call(coach: Coach, *seller_lines: str) -> dict:
    """A call shaped like the graded ones (the customer's lines of tests/conftest.py), with these seller lines."""
    lines = []
    for n, line in enumerate(seller_lines):
        lines += [("customer", CUSTOMER_LINES[n % len(CUSTOMER_LINES)]), ("seller", line)]
    return coach.review({"call_id": "practice-1", "turns": turns(*lines, ("customer", CUSTOMER_LINES[-1]))})


def test_items_that_beat_their_baseline_get_a_verdict_and_the_line_that_decided_it(coach_dir):
    coach = Coach.load(coach_dir / "coach.json")
    figures = coach.figures
    assert (figures["graded_train"], figures["graded_test"]) == (36, 12)
    for item in figures["items"].values():  # every item beats always giving the training majority
        assert item["judged"] and item["accuracy"]["value"] > item["baseline_accuracy"]["value"]
        assert item["accuracy"]["low"] <= item["accuracy"]["value"] <= item["accuracy"]["high"]
    grade = figures["grade"]
    assert grade["shown"] and grade["mae"]["value"] < grade["baseline_mae"]["value"]
    r = review_call(coach, "Hi, this is Bruno from Acme, call 99. Do you have a minute to talk?",
                    "What plan do you have today?", "Well, just think about it and let me know.")
    verdicts = {i["name"]: i for c in r["criteria"] for i in c["items"]}
    assert {name: i["verdict"] for name, i in verdicts.items()} == {
        "Asked whether the customer has time": "yes", "Asked about the current plan": "yes", "Proposed a next step": "no"}
    assert verdicts["Asked whether the customer has time"]["evidence"] == [
        {"turn": 1, "role": "seller", "quote": "Hi, this is Bruno from Acme, call 99. Do you have a minute to talk?"}]
    assert verdicts["Asked about the current plan"]["evidence"][0]["turn"] == 3
    assert r["grade"]["shown"] == f"about {r['grade']['estimate']:.0f} (±{grade['mae']['value']:.1f})"
    assert [c["title"] for c in r["criteria"]] == list(SCORECARD)
    similar = r["criteria"][0]["similar"]
    assert len(similar) == 3 and all(s["summary"].startswith("Opening and rapport: ") for s in similar)
    assert [s["similarity"] for s in similar] == sorted((s["similarity"] for s in similar), reverse=True)
    # Saved and loaded again, the refitted coach gives the same review (no pickle: coach.json is plain JSON).
    again = Coach.load(coach_dir / "coach.json")
    assert review_call(again, "Do you have a minute to talk?") == review_call(coach, "Do you have a minute to talk?")


def test_what_does_not_beat_its_baseline_is_not_shown(tmp_path):
    calls, splits = write_graded(tmp_path, n_train=20, n_test=6)
    rows = list(read_jsonl(calls))
    for call in rows:  # every call graded 5 and every first item done: nothing to learn beyond the baseline
        call["evaluation"]["grade"] = 5
        call["evaluation"]["feedbacks"][0]["checklist"][0]["status"] = True
    write_examples(calls, rows)
    build_coach(calls, splits, tmp_path / "coach", CoachConfig(bootstrap_samples=10))
    r = review_call(Coach.load(tmp_path / "coach" / "coach.json"), "Do you have a minute to talk?")
    assert r["grade"]["estimate"] is None and "does not beat always guessing the training mean" in r["grade"]["why"]
    first = r["criteria"][0]["items"][0]
    assert first["verdict"] == "not judged" and first["why"] == "every training call has the same answer (yes)"


def test_a_call_without_a_seller_turn_gets_a_clear_message(coach_dir):
    with pytest.raises(CoachError, match="this call has no seller turn"):
        Coach.load(coach_dir / "coach.json").review({"turns": turns(("customer", "Hello?"), ("seller", "  "))})


def test_the_review_needs_no_torch(coach_dir):
    program = ("import sys; from calltune.coaching.coach import Coach; import calltune.coaching.history, "
               "calltune.coaching.review, calltune.coaching.step; "
               f"Coach.load({str(coach_dir / 'coach.json')!r}).review({{'turns': {AGREED!r}}}); "
               "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


JUDGED = {"rationale": "Asked for time and about the plan, no next step.", "overview": "A short call.",
          "positive": "Asked for time.", "negative": "No next step.", "grade": 6,
          "feedbacks": [{"title": "Opening and rapport", "summary": "Asked for time.",
                         "evidence": "do you have a minute to talk?",
                         "checklist": [{"type": "Asked whether the customer has time", "status": True}]},
                        {"title": "Qualifying", "summary": "Asked about the plan.", "evidence": "Something else.",
                         "checklist": [{"type": "asked about the current plan", "status": True}]},
                        {"title": "NEXT STEPS", "summary": "None.", "evidence": "",
                         "checklist": [{"type": "Proposed a next step", "status": False}]}]}


def test_the_judge_reviews_in_the_scorecard_and_its_quotes_are_found_or_marked(coach_dir):
    card = read_scorecard(coach_dir / "scorecard.json")
    call = turns(("customer", "Hello?"), ("seller", "Hi! Do you have a minute to talk?"), ("customer", "Yes."))
    prompt = build_request("You are Ana.", call, JudgeConfig(), card)["messages"][1]["content"]
    for name in [*SCORECARD, "Asked about the current plan", "from 0 to 10", "(grade: calls)"]:
        assert name in prompt
    train = {f"g{i:03d}" for i in range(36)}
    shown = {e["call_id"] for e in card.few_shot}
    assert len(shown) == 2 and shown <= train and all(f"({c})" in prompt for c in shown)  # examples from train only
    review = parse(json.dumps(JUDGED), card, call)
    assert [f["title"] for f in review["feedbacks"]] == list(SCORECARD)
    assert [f["evidence_turn"] for f in review["feedbacks"]] == [1, None, None]  # found; not in the call; none given
    assert review["feedbacks"][1]["checklist"] == [{"type": "Asked about the current plan", "status": True}]
    for broken, message in [({**JUDGED, "feedbacks": JUDGED["feedbacks"][:2]}, "no feedback on the criterion 'Next"),
                            ({**JUDGED, "feedbacks": [*JUDGED["feedbacks"][:2], {**JUDGED["feedbacks"][2],
                                                                                  "checklist": []}]},
                             "no yes/no for the item 'Proposed a next step'"),
                            ({**JUDGED, "grade": 11}, "not a whole number from 0 to 10")]:
        with pytest.raises(ReviewError, match=message):
            parse(json.dumps(broken), card, call)


def test_the_judges_calibration_against_the_company_grades(coach_dir, tmp_path, monkeypatch):
    pytest.importorskip("openai")
    card = read_scorecard(coach_dir / "scorecard.json")
    calls, _ = write_graded(tmp_path)
    test = [c for c in read_jsonl(calls)][36:40]
    answers = []
    for call in test[:3]:  # the judge grades two points high and gets each checklist item right
        truth = labels(call, card)
        answers.append(json.dumps({**JUDGED, "grade": call["evaluation"]["grade"] + 2 if call["evaluation"]["grade"] < 9
                                   else call["evaluation"]["grade"] - 2, "feedbacks": [
            {**f, "checklist": [{"type": i.name, "status": truth[(ci, ii)]} for ii, i in enumerate(c.items)]}
            for ci, (c, f) in enumerate(zip(card.criteria, JUDGED["feedbacks"]))]}))
    answers.append("I liked it.")  # unreadable: counted, left out
    monkeypatch.setenv("COACH_JUDGE_KEY", "sk-coach")
    with FakeOpenAI(api_key="sk-coach", replies=answers) as judge:
        cfg = JudgeConfig(backend="openai", model="judge-1", base_url=f"{judge.endpoint}/v1", api_key_env="COACH_JUDGE_KEY",
                          max_concurrency=1, max_retries=0)
        from calltune.evaluation.judge import make_judge

        judged = make_judge(cfg, tmp_path)
        result = calibrate(test, card, judged, samples=50, seed=0)
        judged.close()
    assert (result["reviewed"], result["unreadable_or_failed"]) == (3, 1)
    assert result["grade"]["mae"]["value"] == 2.0 and result["grade"]["mae"]["n"] == 3
    assert all(item["accuracy"]["value"] == 1.0 for item in result["items"].values())
    # The coach step with that judge: its calibration is in the report section the evaluation and the card show.
    with FakeOpenAI(api_key="sk-coach", replies=answers[:2]) as judge:
        cfg = cfg.model_copy(update={"base_url": f"{judge.endpoint}/v1", "max_examples": 2})
        metrics = build_coach(calls, tmp_path / "splits", tmp_path / "coach", CoachConfig(bootstrap_samples=50),
                              judge=cfg, seed=0, state_dir=tmp_path)
    assert metrics["judge_grade_mae"] == 2.0
    section = json.loads((tmp_path / "coach" / "summary.json").read_text())
    assert section["calibration"]["reviewed"] == 2 and "The judge's calibration" in json.dumps(section["parts"])


def test_the_coach_step_writes_what_the_model_card_and_the_evaluation_report_show(coach_dir, tmp_path):
    assert {p.name for p in coach_dir.iterdir()} == {"scorecard.json", "coach.json", "summary.json", "report.md",
                                                     "report.html"}
    model = tmp_path / "model"
    model.mkdir()
    (model / "calltune_model.json").write_text(json.dumps({"base_model": "tiny", "config": {}}))
    (model / COACH_DIR).mkdir()
    for name in ("summary.json", "coach.json"):
        (model / COACH_DIR / name).write_bytes((coach_dir / name).read_bytes())
    card = write_model_card(model).read_text()
    section = card[card.index("## Coaching"):card.index("## How to use")]
    assert "### The scorecard and the checklist verdicts" in section and "### Grade estimate" in section
    assert "| Opening and rapport | Asked whether the customer has time | yes |" in section
    assert "MAE (grade points)" in section and "36 graded training calls and measured on 12" in section


def test_the_history_stores_each_call_once_and_loses_nothing_to_concurrent_writers(database_url):
    history = open_history(database_url, "unused")
    stored, created = history.add("Ana", "call-1", {"turns": []}, {"grade": {"estimate": 6}}, grade=6.0, model_version=2)
    again, created_again = history.add("Ana", "call-1", {"turns": []}, {"grade": {"estimate": 9}}, grade=9.0)
    assert (created, created_again) == (True, False) and again == stored  # a retry adds nothing and changes nothing
    assert history.add_judge_review("Ana", "call-1", {"grade": 7}) and not history.add_judge_review("Bo", "call-1", {})
    assert history.list("Ana")[0].judge_grade == 7.0 and history.list("Bo") == []

    # Writers on their own connections, started together: every call of every writer is stored, each key once.
    others = [SqlHistory(database_url) for _ in range(4)]
    start = threading.Barrier(len(others))
    errors = []

    def write(n: int, store) -> None:
        try:
            start.wait()
            for i in range(15):
                store.add("Bo", f"w{n}-{i}", {"turns": []}, {})
                store.add("Bo", "shared", {"turns": []}, {"writer": n})  # the same key from every writer
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=write, args=(n, s)) for n, s in enumerate(others)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    pages, before = [], None
    while True:
        page = history.list("Bo", limit=PAGE, before=before)
        pages += page
        if len(page) < PAGE:
            break
        before = page[-1].id
    assert len(pages) == 4 * 15 + 1 and len({c.call_id for c in pages}) == len(pages)
    assert [c.id for c in pages] == sorted((c.id for c in pages), reverse=True)  # newest first, page after page
    for store in [history, *others]:
        store.close()


def test_calltune_coach_reviews_a_seed_csv_row_and_a_downloaded_practice_transcript(coach_dir, tmp_path, capsys):
    from calltune.cli import main

    state = f"state_dir={tmp_path / 'state'}"
    good = {"id": "77", "transcription": str([
        {"message": "Alô?", "role": "bot"},
        {"message": "Boa tarde, aqui é o Bruno da Acme. Você tem um minuto para conversar?", "role": "user"},
        {"message": "Tenho sim, pode falar.", "role": "bot"}]), "grade": "7", "feedbacks": FEEDBACK}
    export = seed_csv(tmp_path / "export.csv", [good, {"id": "78", "transcription": "[{'message': 'x'"}])
    assert main(["coach", str(export), "--coach", str(coach_dir), state]) == 0
    out, err = capsys.readouterr()
    assert f"coach: {coach_dir / 'coach.json'}; 1 call(s), 1 translated from pt first (local" in out
    assert "== call 77" in out and "(the company graded it 7)" in out and "Questions you asked: 1" in out
    assert "minute" in out and "Você" not in out  # the analytics read the English translation
    assert err.strip() == f"calltune: {export}: row 2: unparseable transcript (not reviewed)"

    # A transcript downloaded from the practice page (calls_jsonl, English): reviewed as it is, as JSON on request.
    practice = tmp_path / "practice-20260101T000000Z.jsonl"
    write_examples(practice, [{"call_id": "practice-1", "persona": {}, "system": "You are Ana.", "turns": [
        {"role": "customer", "text": "Hello?"},
        {"role": "seller", "text": "Hi, this is Bruno from Acme, call 1. Do you have a minute to talk?"},
        {"role": "customer", "text": "Yes."}]}, {"call_id": "practice-2", "turns": [{"role": "customer", "text": "Hi?"}]}])
    assert main(["coach", str(practice), "--coach", str(coach_dir.parent), "--json", state]) == 0
    [reviewed, silent] = json.loads(capsys.readouterr().out)
    asked = reviewed["review"]["criteria"][0]["items"][0]
    assert asked["verdict"] == "yes" and asked["evidence"][0]["turn"] == 1
    assert silent == {"call_id": "practice-2", "error": "this call has no seller turn: there is nothing of yours to "
                                                       "review (say something to the customer, then end the call)"}
    assert main(["coach", str(practice), "--coach", str(coach_dir), "--call", "practice-2", state]) == 1
    assert "no review: this call has no seller turn" in capsys.readouterr().out
    # No coach given and nothing deployed: one line, no traceback.
    assert main(["coach", str(practice), state]) == 1
    assert capsys.readouterr().err.startswith("calltune: ")
