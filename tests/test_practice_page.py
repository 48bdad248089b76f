"""The practice page in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against
`calltune serve`'s app on a tiny model, deployed through calltune's own deploy code. Screenshots of the page go to
$CALLTUNE_TEST_ARTIFACTS (default out/test-artifacts)."""
import json
import os
import shutil
import time
from contextlib import closing
from pathlib import Path

import pytest

from calltune.apps.serve.app import serving
from calltune.backends.registry import open_registry
from calltune.config import Config, DataConfig, TuneConfig
from calltune.data.ingest import ingest
from calltune.release.deploy import deploy, rollback
from calltune.release.model_card import COACH_DIR

from conftest import ARTIFACTS, HANG_UP_REPLY, SCORECARD, make_example, write_examples
from fakes.openai_compat import FakeOpenAI

playwright_api = pytest.importorskip("playwright.sync_api")
playwright_api.expect.set_options(timeout=60_000)  # the 2 CPUs may be busy generating: wait, never fail on time

TEMPLATE = "You are {character}, a busy customer on a {meeting_type} sales call."
ANA, BRUNO = (TEMPLATE.format(character=c, meeting_type=m) for c, m in [("Ana", "FirstContact"), ("Bruno", "FollowUp")])
JUDGE_KEY = "sk-test-practice-judge"
# Counts text changes inside customer replies: a streamed reply changes several times, a whole one once.
COUNT_STREAMED = """() => { window.replyUpdates = 0; new MutationObserver((records) => {
  for (const r of records) if (r.target.closest && r.target.closest('.turn.customer .text')
      || r.target.parentElement && r.target.parentElement.closest('.turn.customer .text')) window.replyUpdates++;
}).observe(document.getElementById('transcript'), {subtree: true, childList: true, characterData: true}); }"""


@pytest.fixture(scope="module")
def persona_model(tmp_path_factory, tiny_chat_model) -> Path:
    """A LoRA on the tiny word-level chat model, trained in seconds on two personas (Ana three times, Bruno once)
    until it answers with words of its vocabulary."""
    from calltune.training.lora import train_lora

    tmp = tmp_path_factory.mktemp("persona-model")
    lines = [("who is calling ?", ANA), ("price ?", ANA), ("friday ?", ANA), ("ana ?", BRUNO)]
    examples = [make_example(i, [], line, "yes , ana is calling . who is calling ?", system=system)
                for i, (line, system) in enumerate(lines)]
    cfg = TuneConfig(base_model=str(tiny_chat_model), max_steps=10, learning_rate=0.05, batch_size=4, max_seq_len=96,
                     lora_dropout=0.0)
    train_lora(write_examples(tmp / "train.jsonl", examples), None, tmp / "model", cfg, seed=0, state_dir=tmp / "state")
    return tmp / "model"


@pytest.fixture(scope="module")
def browser(chromium):
    """The session's headless Chromium (tests/conftest.py: Debian's, driven by Playwright)."""
    return chromium


@pytest.fixture
def page(browser):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def practice_config(state: Path, **judge) -> Config:
    return Config(state_dir=str(state), data={"system_prompt": TEMPLATE}, judge=judge or {})


def practice_serving(cfg: Config, port: int = 0):
    """`calltune serve` for cfg (its API and the practice page), on loopback; yields its base URL."""
    serve_cfg = cfg.serve.model_copy(update={"port": port, "refresh_s": 0.05})
    return serving(serve_cfg, cfg.deploy, cfg.state_path(), cfg.split, page=cfg)


def wait_for_version(url: str, version: int | None, key: str = "") -> None:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/practice/api/setup", headers=headers).json()["version"] != version:
        assert time.monotonic() < deadline, f"version {version} never served"
        time.sleep(0.05)


def customer_turns(page) -> list[str]:
    return page.evaluate("[...document.querySelectorAll('.turn.customer:not(.streaming) .text')].map(e => e.textContent)")


def say(page, line: str) -> str:
    """Type a line as the seller (Enter sends it) and wait for the customer's reply; returns the reply."""
    replies = len(customer_turns(page))
    page.get_by_label("Your line").fill(line)
    page.get_by_label("Your line").press("Enter")
    playwright_api.expect(page.locator(".turn.customer:not(.streaming)")).to_have_count(replies + 1)
    return customer_turns(page)[-1]


def read_calls(path: Path, tmp_path: Path) -> list[dict]:
    """The downloaded transcript through calltune's own calls_jsonl reader."""
    report = ingest(path, tmp_path / "calls.jsonl", tmp_path / "quarantine.jsonl", DataConfig(format="calls_jsonl"))
    assert (report["calls"], report["quarantined"]) == (1, 0), report
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_a_call_with_a_trained_persona_streams_downloads_and_is_reviewed(page, persona_model, tmp_path):
    review = {"rationale": "The seller asked for the customer by name and asked for a minute.",
              "overview": "A short opening.", "positive": "Polite opening.", "negative": "No next step.", "grade": 4}
    with FakeOpenAI(api_key=JUDGE_KEY, replies=[json.dumps(review)]) as judge:
        os.environ["CALLTUNE_TEST_JUDGE_KEY"] = JUDGE_KEY
        cfg = practice_config(tmp_path / "state", backend="openai", model="judge-1", base_url=f"{judge.endpoint}/v1",
                              api_key_env="CALLTUNE_TEST_JUDGE_KEY")
        deploy(persona_model, cfg.deploy, cfg.state_path(), run_id="run-1", metrics={})
        with practice_serving(cfg) as url:
            page.goto(url)
            expect = playwright_api.expect
            expect(page.locator("#served")).to_have_text("Customer model: llm-endpoint · version 1")
            # The persona the model was trained on, its fields read back through data.system_prompt.
            customer = page.get_by_label("Customer", exact=True)
            expect(customer.locator("option")).to_have_text(
                ["Ana · FirstContact", "Bruno · FollowUp", "Describe your own customer…"])
            customer.select_option(label="Bruno · FollowUp")
            expect(page.locator("#customer-details")).to_contain_text(BRUNO)

            page.evaluate(COUNT_STREAMED)
            page.get_by_role("button", name="Start the call").click()
            page.wait_for_selector(".turn.customer:not(.streaming)")  # the customer answers the phone
            lines = ["Hello, is this Bruno?", "Do you have a minute to talk about insurance?"]
            replies = [customer_turns(page)[0]] + [say(page, line) for line in lines]
            assert all(replies), replies
            assert page.evaluate("window.replyUpdates") > len(replies)  # replies arrived in pieces
            page.screenshot(path=ARTIFACTS / "practice-page.png", full_page=True)

            page.get_by_role("button", name="End the call").click()
            with page.expect_download() as download:
                page.get_by_role("link", name="Download the transcript (JSONL)").click()
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            [call] = read_calls(saved, tmp_path)
            assert call["system"] == BRUNO and call["persona"] == {"character": "Bruno", "meeting_type": "FollowUp"}
            assert call["turns"] == [{"role": "customer", "text": replies[0]},
                                     {"role": "seller", "text": lines[0]}, {"role": "customer", "text": replies[1]},
                                     {"role": "seller", "text": lines[1]}, {"role": "customer", "text": replies[2]}]
            assert page.get_by_label("Transcript, in calltune's calls_jsonl input format").input_value() == \
                saved.read_text()

            # The judge's review, its reasoning first; the judge saw the whole call, seller and customer.
            expect(page.locator("#review .grade")).to_have_text("4 / 10")
            expect(page.locator("#judge-review h4")).to_have_text(
                ["The judge's reasoning", "Overview", "What went well", "What to do better", "Grade"])
            expect(page.locator("#review")).to_contain_text(review["rationale"])
            page.screenshot(path=ARTIFACTS / "practice-page-after-call.png", full_page=True)
            sent = judge.bodies()[-1]["messages"][-1]["content"]
            assert BRUNO in sent and f"seller: {lines[1]}" in sent and f"customer: {replies[2]}" in sent

            # Nothing on the page names a file or the secret's payload.
            shown = page.content() + json.dumps(page.evaluate("fetch('/practice/api/setup').then(r => r.json())"))
            assert str(tmp_path) not in shown and "file:" not in shown


def test_when_the_customer_hangs_up_the_page_says_so_and_moves_to_after_the_call(page, hang_up_model, tmp_path):
    cfg = practice_config(tmp_path / "state")
    deploy(hang_up_model, cfg.deploy, cfg.state_path(), run_id="run-1", metrics={})
    with practice_serving(cfg) as url:
        page.goto(url)
        expect = playwright_api.expect
        expect(page.locator("#served")).to_have_text("Customer model: llm-endpoint · version 1")
        page.get_by_label("The customer answers the phone first").uncheck()
        page.get_by_role("button", name="Start the call").click()
        page.get_by_label("Your line").fill("who is calling ?")
        page.get_by_label("Your line").press("Enter")
        # The reply, then the customer is gone: the after-call view says so, without the seller ending the call.
        expect(page.locator("#after")).to_be_visible()
        expect(page.locator("#call")).to_be_hidden()
        expect(page.locator("#ended-by")).to_contain_text("hung up")
        call = json.loads(page.get_by_label("Transcript, in calltune's calls_jsonl input format").input_value())
        assert call["turns"] == [{"role": "seller", "text": "who is calling ?"},
                                 {"role": "customer", "text": HANG_UP_REPLY}]
        page.screenshot(path=ARTIFACTS / "practice-page-hung-up.png", full_page=True)
        # The next call starts afresh: nobody has hung up on it yet.
        page.get_by_role("button", name="New call").click()
        page.get_by_role("button", name="Start the call").click()
        expect(page.locator("#call")).to_be_visible()
        expect(page.locator("#ended-by")).to_be_hidden()


def test_the_page_names_a_version_promoted_between_calls(page, tiny_chat_model, persona_model, tmp_path):
    cfg = practice_config(tmp_path / "state")
    deploy(tiny_chat_model, cfg.deploy, cfg.state_path(), run_id="run-1", metrics={})
    with practice_serving(cfg) as url:
        page.goto(url)
        expect = playwright_api.expect
        expect(page.locator("#served")).to_have_text("Customer model: llm-endpoint · version 1")
        # No model card: the seller describes the customer, rendered through the training template.
        page.get_by_label("Customer", exact=True).select_option(label="Describe your own customer…")
        page.get_by_label("Character").fill("Bruno Lima")
        page.get_by_label("Meeting type").fill("FollowUp")
        page.get_by_label("The customer answers the phone first").uncheck()
        page.get_by_role("button", name="Start the call").click()
        expect(page.locator("#call-with")).to_have_text("You are calling Bruno Lima · FollowUp. Version 1 answers.")
        say(page, "who is calling ?")
        page.get_by_role("button", name="End the call").click()
        # No judge configured: the page says so and shows no judge's review; the served model carries no coach, so
        # the coach's review is the analytics alone, and no grade.
        expect(page.locator("#judge-review")).to_contain_text("No judge is configured")
        expect(page.locator("#review .grade")).to_have_count(0)
        expect(page.locator("#coach-review .analytics li")).to_have_count(8)
        expect(page.locator("#coach-review .no-grade")).to_have_text("No grade: the training data had no grades.")
        call = json.loads(page.get_by_label("Transcript, in calltune's calls_jsonl input format").input_value())
        assert call["system"] == "You are Bruno Lima, a busy customer on a FollowUp sales call."

        deploy(persona_model, cfg.deploy, cfg.state_path(), run_id="run-2", metrics={})  # promoted between calls
        wait_for_version(url, 2)
        page.get_by_role("button", name="New call").click()
        page.get_by_label("Customer", exact=True).select_option(label="Ana · FirstContact")
        page.get_by_role("button", name="Start the call").click()
        expect(page.locator("#notice")).to_have_text(
            "A new model version is answering: llm-endpoint version 2 (your last call was with version 1).")
        expect(page.locator("#served")).to_have_text("Customer model: llm-endpoint · version 2")
        say(page, "Hello, is this Ana?")

        rollback(cfg.deploy, cfg.state_path())  # version 3, with version 1's model, lands during the call
        wait_for_version(url, 3)
        say(page, "price ?")
        expect(page.locator("#notice")).to_have_text(
            "llm-endpoint version 3 answers from this reply on: it was promoted during the call.")
        expect(page.locator("#served")).to_have_text("Customer model: llm-endpoint · version 3")


def test_errors_are_shown_and_recoverable_by_keyboard_on_a_phone(browser, persona_model, tmp_path, monkeypatch):
    """API key asked once and kept in the tab's session only; 429 and a disabled version retried after Retry-After;
    a silent server timed out; a stopped server reported, and the call goes on once it is back. Keyboard only, on a
    phone-sized screen."""
    expect = playwright_api.expect
    monkeypatch.setenv("CALLTUNE_API_KEY", "pk-practice-key")
    cfg = practice_config(tmp_path / "state")
    deploy(persona_model, cfg.deploy, cfg.state_path(), run_id="run-1", metrics={})
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    context.set_default_timeout(60_000)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    held = []  # requests the fake network drops on the floor

    def network(route):
        mode = faults.pop(0) if faults else "pass"
        if mode == "429":
            route.fulfill(status=429, headers={"Retry-After": "1"}, content_type="application/json",
                          body=json.dumps({"error": {"message": "Too many requests", "type": "rate_limit"}}))
        elif mode == "hang":
            held.append(route)
        else:
            route.continue_()

    faults: list[str] = []
    page.route("**/v1/chat/completions", network)
    with practice_serving(cfg) as url:
        page.goto(f"{url}/?timeout_s=2")
        expect(page.get_by_label("Your key")).to_be_focused()  # the page asks for the key first
        page.keyboard.type("pk-practice-key")
        page.keyboard.press("Enter")
        expect(page.locator("#served")).to_have_text("Customer model: llm-endpoint · version 1")
        assert page.evaluate("[sessionStorage.getItem('calltune.apiKey'), localStorage.length]") == ["pk-practice-key", 0]
        assert "pk-practice-key" not in page.content()

        page.get_by_label("Customer", exact=True).focus()
        page.keyboard.press("ArrowDown")  # Bruno
        page.keyboard.press("Tab")
        expect(page.get_by_label("The customer answers the phone first")).to_be_focused()
        page.keyboard.press("Space")  # the seller speaks first
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")  # Start the call
        expect(page.get_by_label("Your line")).to_be_focused()
        expect(page.locator("#call-with")).to_contain_text("Bruno · FollowUp")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone

        faults[:] = ["429"]
        page.keyboard.type("who is calling ?")
        page.keyboard.press("Enter")
        expect(page.locator("#error-text")).to_contain_text("Too many requests (HTTP 429) Retrying in 1 s")
        expect(page.locator(".turn.customer:not(.streaming)")).to_have_count(1)  # retried by itself
        expect(page.locator("#error")).to_be_hidden()
        page.screenshot(path=ARTIFACTS / "practice-page-phone.png", full_page=True)

        faults[:] = ["hang"]
        say_line = page.get_by_label("Your line")
        say_line.type("price ?")
        say_line.press("Enter")
        expect(page.locator("#error-text")).to_have_text("No answer for 2 s: the server may be overloaded.")
        expect(page.get_by_role("button", name="Retry now")).to_be_focused()
        page.keyboard.press("Enter")
        expect(page.locator(".turn.customer:not(.streaming)")).to_have_count(2)

        with closing(open_registry(cfg.deploy, cfg.state_path())) as registry:
            registry.disable(cfg.deploy.secret_id, 1)
            wait_for_version(url, None, key="pk-practice-key")
            say_line.type("friday ?")
            say_line.press("Enter")
            expect(page.locator("#error-text")).to_contain_text("llm-endpoint version 1 (the latest) is disabled")
            expect(page.locator("#error-text")).to_contain_text("Retrying in")
            registry.enable(cfg.deploy.secret_id, 1)
        expect(page.locator(".turn.customer:not(.streaming)")).to_have_count(3)

        port = int(url.rsplit(":", 1)[1])
    # The server is down.
    say_line.type("ana ?")
    say_line.press("Enter")
    expect(page.locator("#error-text")).to_have_text("Cannot reach the calltune server. Is `calltune serve` still running?")
    expect(page.locator(".turn.seller")).to_have_count(4)  # the line is kept
    with practice_serving(cfg, port=port):
        page.keyboard.press("Enter")  # Retry now
        expect(page.locator(".turn.customer:not(.streaming)")).to_have_count(4)
    for route in held:
        route.abort()
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def with_coach(model: Path, coach_dir: Path, out: Path) -> Path:
    """A copy of a model folder that carries the coach (coach/), as the tune step makes it."""
    shutil.copytree(model, out)
    shutil.copytree(coach_dir, out / COACH_DIR)
    return out


def save_small_png(page, selector: str, path: Path, height: int = 1150) -> None:
    """The top of an element, from the top of the page, in 64 colours: small enough to commit (docs/coaching.png)."""
    import io

    from PIL import Image

    page.evaluate("window.scrollTo(0, 0)")
    box = page.locator(selector).bounding_box()
    png = page.screenshot(full_page=True, clip={"x": box["x"], "y": box["y"], "width": box["width"],
                                                "height": min(box["height"], height)})
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64).save(path, optimize=True)


def end_call_and_read_review(page) -> None:
    page.get_by_role("button", name="End the call").click()
    playwright_api.expect(page.locator("#coach-review h3")).to_have_text("Your review")
    playwright_api.expect(page.locator("#coach-review .analytics li")).to_have_count(8)


def test_after_a_call_the_coach_reviews_it_beside_the_call_and_my_progress_keeps_it(page, tuned_model, coach_dir,
                                                                                     tmp_path):
    """The bundled SmolLM2 (a LoRA tuned on it) carrying a coach: the review, its quotes, the history."""
    expect = playwright_api.expect
    model = with_coach(tuned_model[0], coach_dir, tmp_path / "model")
    cfg = Config(state_dir=str(tmp_path / "state"), serve={"default_max_tokens": 12})
    deploy(model, cfg.deploy, cfg.state_path(), run_id="run-1", metrics={})
    with practice_serving(cfg) as url:
        page.goto(url)
        name = page.get_by_label("Your name, to keep your practice history (optional)")
        name.fill("Ana Souza")
        expect(page.locator("#name-notice")).to_contain_text("it proves nothing about who you are")
        page.get_by_role("button", name="Start the call").click()
        page.wait_for_selector(".turn.customer:not(.streaming)")  # the customer answers the phone: turn 0
        say(page, "Hi, this is Bruno from Acme, call 99. Do you have a minute to talk?")  # turn 1
        say(page, "What plan do you have today?")  # turn 3
        end_call_and_read_review(page)
        review = page.locator("#coach-review")
        expect(review.locator(".analytics li[data-metric=questions] .value")).to_have_text("2")
        expect(review.locator(".estimate")).to_contain_text("about")  # the estimate beat its baseline: shown...
        expect(review).to_contain_text("this estimate was off by")    # ...with how sure it is
        expect(review.locator(".criterion h5")).to_have_text(list(SCORECARD))
        asked = review.locator(".criterion li", has_text="Asked whether the customer has time")
        expect(asked.locator(".verdict")).to_have_text("yes")
        quote = asked.locator("button.quote")
        expect(quote).to_contain_text("Do you have a minute to talk?")
        expect(review.locator(".criterion").first).to_contain_text("Feedback that similar calls received")
        quote.click()  # the quote scrolls the call to its moment
        moment = page.locator("#after-transcript li.flash")
        expect(moment).to_have_attribute("data-turn", "1")
        expect(moment).to_be_in_viewport()
        expect(review.locator(".saved")).to_have_text("Saved in the practice history of “Ana Souza”.")
        expect(page.get_by_role("link", name="Download the transcript (JSONL)")).to_be_visible()  # still there
        save_small_png(page, "#after", ARTIFACTS / "coaching.png")  # the README's "Coaching" picture (docs/)

        page.locator("#progress-after").click()
        expect(page.locator("#progress-who")).to_have_text("Practice calls of “Ana Souza”.")
        expect(page.locator("#progress-table tbody tr")).to_have_count(1)
        expect(page.locator("#progress-table tbody tr td").nth(2)).to_contain_text("about")
        expect(page.locator("#progress-chart circle")).to_have_count(1)

        page.get_by_role("button", name="Back").click()
        page.get_by_role("button", name="New call").click()
        expect(name).to_have_value("Ana Souza")  # kept for this tab
        page.get_by_role("button", name="Start the call").click()
        page.wait_for_selector(".turn.customer:not(.streaming)")
        say(page, "I am calling about your car insurance.")
        end_call_and_read_review(page)
        asked = page.locator("#coach-review .criterion li", has_text="Asked whether the customer has time")
        expect(asked.locator(".verdict")).to_have_text("no")
        page.locator("#progress-open").click()  # from the bar, at any time
        expect(page.locator("#progress-table tbody tr")).to_have_count(2)
        expect(page.locator("#progress-chart circle")).to_have_count(2)
        page.screenshot(path=ARTIFACTS / "coaching-progress.png", full_page=True)


def test_a_judge_answering_in_the_scorecard_reviews_each_criterion_with_its_quote(page, tiny_chat_model, coach_dir,
                                                                                  tmp_path):
    expect = playwright_api.expect
    seller_line = "who is calling ? Do you have a minute to talk?"
    answer = {"rationale": "Asked for time, nothing more.", "overview": "A short call.", "positive": "Asked for time.",
              "negative": "No next step.", "grade": 3,
              "feedbacks": [{"title": title, "summary": f"About {title.lower()}.",
                             "evidence": "Do you have a minute to talk?" if n == 0 else "We will call you on Monday.",
                             "checklist": [{"type": item, "status": n == 0} for item, _, _ in items]}
                            for n, (title, items) in enumerate(SCORECARD.items())]}
    with FakeOpenAI(api_key=JUDGE_KEY, replies=[json.dumps(answer)]) as judge:
        os.environ["CALLTUNE_TEST_JUDGE_KEY"] = JUDGE_KEY
        cfg = practice_config(tmp_path / "state", backend="openai", model="judge-1", base_url=f"{judge.endpoint}/v1",
                              api_key_env="CALLTUNE_TEST_JUDGE_KEY")
        deploy(with_coach(tiny_chat_model, coach_dir, tmp_path / "model"), cfg.deploy, cfg.state_path(),
               run_id="run-1", metrics={})
        with practice_serving(cfg) as url:
            page.goto(url)
            page.get_by_label("Customer", exact=True).select_option(label="Describe your own customer…")
            page.get_by_label("Character").fill("Ana")
            page.get_by_label("The customer answers the phone first").uncheck()
            page.get_by_role("button", name="Start the call").click()
            say(page, seller_line)
            end_call_and_read_review(page)
            judged = page.locator("#judge-review")
            expect(judged.locator("h3")).to_have_text("The judge's review (openai:judge-1)")
            expect(judged.locator(".criterion h5")).to_have_text(list(SCORECARD))
            expect(judged.locator(".criterion").nth(0).locator(".verdict")).to_have_text(["yes"])
            judged.locator(".criterion").nth(0).locator("button.quote").click()
            expect(page.locator("#after-transcript li.flash")).to_have_attribute("data-turn", "0")
            # A quote that is not in the seller's lines is shown as such, never pointed at a turn.
            expect(judged.locator(".criterion").nth(1)).to_contain_text(
                "“We will call you on Monday.” (not found in your lines)")
            expect(judged.locator(".grade")).to_have_text("3 / 10")
            judged.locator("summary", has_text="The review as JSON").click()
            shown = json.loads(judged.locator("pre").text_content())
            assert list(shown) == ["rationale", "overview", "positive", "negative", "feedbacks", "grade"]
            assert [f["title"] for f in shown["feedbacks"]] == list(SCORECARD)
            prompt = judge.bodies()[-1]["messages"][-1]["content"]
            assert "Opening and rapport" in prompt and f"seller: {seller_line}" in prompt


def test_a_seller_signs_in_to_their_own_progress_and_a_manager_to_the_team(browser, coach_dir, tmp_path):
    """Per-seller keys: a seller sees only their own calls (another's history is refused to the page too); a
    manager sees the team, the checklist items a seller misses most as a chart, and any seller's calls."""
    import httpx
    from test_team import bearer, call, team_server

    expect = playwright_api.expect
    asked, next_step = "Asked whether the customer has time", "Proposed a next step"
    with team_server(tmp_path, coach_dir, f"sqlite:///{tmp_path / 'team.sqlite'}") as (url, history, clock):
        ana, bo, boss = history.add_user("Ana"), history.add_user("Bo"), history.add_user("Maria", manager=True)
        clock.now += 30
        with httpx.Client(base_url=url, timeout=60) as http:
            for key, call_id, done in [(ana, "a1", {asked}), (ana, "a2", set()), (bo, "b1", {asked, next_step})]:
                assert http.post("/practice/api/calls", json=call(call_id, done), headers=bearer(key)).status_code == 200

        def signed_in(key: str):
            context = browser.new_context(viewport={"width": 1100, "height": 900})
            context.set_default_timeout(60_000)
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            expect(page.get_by_label("Your key")).to_be_focused()
            page.keyboard.type(key)
            page.keyboard.press("Enter")
            return context, page, errors

        context, page, errors = signed_in(ana)
        expect(page.locator("#signed-in")).to_have_text("Signed in as Ana")
        expect(page.locator("#name-field")).to_be_hidden()
        expect(page.get_by_role("button", name="Team")).to_be_hidden()
        page.get_by_role("button", name="My progress").click()
        expect(page.locator("#progress-who")).to_have_text("Practice calls of “Ana”.")
        expect(page.locator("#progress-table tbody tr")).to_have_count(2)
        assert page.evaluate("""async (key) => [
            (await fetch('/practice/api/history?seller=Bo', {headers: {Authorization: `Bearer ${key}`}})).status,
            (await fetch('/practice/api/team', {headers: {Authorization: `Bearer ${key}`}})).status]""", ana) == [403, 403]
        context.close()
        assert not errors, errors

        context, page, errors = signed_in(boss)
        expect(page.locator("#signed-in")).to_have_text("Signed in as Maria (manager)")
        page.get_by_role("button", name="Team").click()
        rows = page.locator("#team-table tbody tr")
        expect(rows).to_have_count(3)
        expect(rows.nth(0).locator("td").nth(0)).to_have_text("Ana")
        expect(rows.nth(0).locator("td").nth(1)).to_have_text("2")
        expect(page.locator("#team-chart-label")).to_contain_text("The checklist items Ana misses most")
        expect(page.locator("#team-chart .missed-bar")).to_have_count(3)  # Ana missed all three items once or more
        page.screenshot(path=ARTIFACTS / "practice-team.png", full_page=True)
        rows.nth(1).get_by_role("button", name="Missed items").click()
        expect(page.locator("#team-chart-label")).to_contain_text("The checklist items Bo misses most")
        rows.nth(1).get_by_role("button", name="Calls").click()
        expect(page.locator("#progress-title")).to_have_text("Progress of Bo")
        expect(page.locator("#progress-table tbody tr")).to_have_count(1)
        page.get_by_role("button", name="Back").click()
        expect(page.locator("#team")).to_be_visible()
        context.close()
        assert not errors, errors


def test_a_call_ended_while_the_database_is_lost_is_kept_and_saved_once_it_is_back(browser, coach_dir, postgres,
                                                                                   tmp_path):
    """The practice history's PostgreSQL refuses connections as the seller ends a call: the page shows the 503, keeps
    the call on screen and saves it by itself after Retry-After, once the database is back; stored once. A call
    ended while the database is away survives a reload of the tab, and is saved once it is back."""
    import httpx
    from test_team import bearer, team_server

    expect = playwright_api.expect
    url = postgres.new_database()
    database = url.split("?")[0].rsplit("/", 1)[1]
    reply = {"model": "llm-endpoint/versions/1", "choices": [{"index": 0, "delta": {"content": "Who is calling?"}}]}
    with team_server(tmp_path, coach_dir, url) as (base, history, clock):
        key = history.add_user("Ana")
        clock.now += 30
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        context.set_default_timeout(60_000)
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # The customer's replies come from this fake network: the model is not what is under test here.
        page.route("**/v1/chat/completions", lambda route: route.fulfill(
            status=200, content_type="text/event-stream", body=f"data: {json.dumps(reply)}\n\ndata: [DONE]\n\n"))
        page.goto(base)
        page.get_by_label("Your key").fill(key)
        page.keyboard.press("Enter")
        expect(page.locator("#signed-in")).to_have_text("Signed in as Ana")
        page.locator("#own-fields input").first.fill("Ana")
        page.get_by_role("button", name="Start the call").click()
        line = page.get_by_label("Your line")
        line.fill("Do you have a minute to talk?")
        line.press("Enter")
        expect(page.locator(".turn.customer:not(.streaming)")).to_have_count(2)

        postgres.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        postgres.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        page.get_by_role("button", name="End the call").click()
        expect(page.locator("#error-text")).to_contain_text("the practice history's database is unreachable")
        expect(page.locator("#error-text")).to_contain_text("Retrying in")
        expect(page.locator("#after-transcript .turn")).to_have_count(3)  # the call stays on screen
        postgres.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        expect(page.locator("#coach-review .saved")).to_have_text("Saved in the practice history of “Ana”.")
        expect(page.locator("#error")).to_be_hidden()

        # A second call, and the tab reloaded while the database is away: the call is kept in the tab and saved once
        # the database is back.
        page.get_by_role("button", name="New call").click()
        expect(page.get_by_label("Customer", exact=True)).to_be_focused()  # the customers are filled in again
        page.locator("#own-fields input").first.fill("Ana")
        page.get_by_role("button", name="Start the call").click()
        line.fill("What plan do you have today?")
        line.press("Enter")
        expect(page.locator("#transcript .turn.customer:not(.streaming)")).to_have_count(2)
        postgres.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        postgres.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        page.get_by_role("button", name="End the call").click()
        expect(page.locator("#error-text")).to_contain_text("the practice history's database is unreachable")
        page.reload()
        expect(page.locator("#error-text")).to_contain_text("Retrying in")  # the kept call, sent again
        postgres.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        expect(page.locator("#notice")).to_contain_text("The call you ended earlier is now saved")
        assert page.evaluate("sessionStorage.getItem('calltune.unsavedCall')") is None
        context.close()
        assert not errors, errors
        calls = httpx.get(f"{base}/practice/api/history", headers=bearer(key), timeout=60).json()["calls"]
        assert [c["turns"] for c in calls] == [3, 3] and calls[0]["call_id"] != calls[1]["call_id"]
