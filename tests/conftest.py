# ---- model fixtures (helper "model": calltune.runtime.loading / tune / evaluate / chat) ----
"""Session-wide model fixtures: the bundled SmolLM2 is converted once per test session into a temporary
state folder, and one tiny tuned model is trained once and shared by the tune, evaluate and chat tests."""
import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # before any test module imports transformers: no download, ever

BUNDLED_MODEL = "smollm2-135m-instruct"
SYSTEM = "You are Ana, a busy customer on a sales call."
# Short dialogues, so the tiny tuning run and the hand-checked evaluation stay fast.
TINY_DIALOGUES = [
    ([], "Hello, is this Ana?", "Yes, speaking. Who is calling?"),
    ([("seller", "Hi Ana, this is Bruno from Acme."), ("customer", "Hi Bruno.")],
     "Do you have a minute to talk about insurance?", "Not really, I am driving right now."),
    ([], "Can we schedule a call for Friday?", "Friday at ten works for me."),
    ([("seller", "Our plan costs fifty a month.")], "What do you think about the price?",
     "That is too expensive for me."),
]


def make_example(i: int, history, prompt: str, target: str, system: str = SYSTEM) -> dict:
    return {"example_id": f"call{i}:{2 * len(history) + 1}", "call_id": f"call{i}", "turn_index": len(history) + 1,
            "system": system, "history": [{"role": r, "text": t} for r, t in history],
            "prompt": prompt, "target": target}


def crash_when_cached(command: list[str], db: Path, table: str, rows: int, fake, requests: int, timeout_s: float,
                      cwd: Path | None = None) -> None:
    """Start `command` and SIGKILL it (a crash: no cleanup, no flush) once its SQLite cache `db` holds `rows` rows
    in `table` and `fake` has seen more than `requests` requests (the next one is pending); fail if that never
    happens within `timeout_s`."""
    import signal
    import sqlite3
    import subprocess
    import time

    child = subprocess.Popen(command, stderr=subprocess.DEVNULL, cwd=cwd)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if db.exists() and len(fake.requests) > requests:
                with sqlite3.connect(db) as conn:
                    if conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == rows:
                        return
            time.sleep(0.05)
        pytest.fail(f"the child never got {rows} rows into {table}")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()


def write_examples(path: Path, examples) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def base_model_state(tmp_path_factory) -> Path:
    """A state folder holding the converted bundled base model (converted on first use)."""
    from calltune.runtime.loading import resolve_base_model

    state = tmp_path_factory.mktemp("state")
    resolve_base_model(BUNDLED_MODEL, state)
    return state


@pytest.fixture(scope="session")
def base_model_dir(base_model_state) -> Path:
    return base_model_state / "base_models" / BUNDLED_MODEL


@pytest.fixture(scope="session")
def tiny_examples_path(tmp_path_factory) -> Path:
    examples = [make_example(i, *d) for i, d in enumerate(TINY_DIALOGUES)]
    return write_examples(tmp_path_factory.mktemp("examples") / "train.examples.jsonl", examples)


@pytest.fixture(scope="session")
def tuned_model(tmp_path_factory, base_model_state, tiny_examples_path) -> tuple[Path, dict]:
    """(model folder, report) of a short LoRA run that memorises the tiny examples (validated on them too)."""
    from calltune.config import TuneConfig
    from calltune.training.lora import train_lora

    out = tmp_path_factory.mktemp("tuned") / "model"
    cfg = TuneConfig(max_steps=12, batch_size=4, learning_rate=2e-3, max_seq_len=96, lora_dropout=0.0)
    report = train_lora(tiny_examples_path, tiny_examples_path, out, cfg, seed=7, state_dir=base_model_state)
    return out, report
# ---- end of model fixtures ----


# ---- tiny causal model: the real Llama architecture with random weights and SmolLM2's tokenizer ----
@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, base_model_dir) -> Path:
    """A 2-layer Llama folder (safetensors, SmolLM2's tokenizer and chat template): tuner tests in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                                         max_position_embeddings=512, tie_word_embeddings=True,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> Path:
    """A 1-layer random Llama with a word-level tokenizer and a ChatML-like template: generates in milliseconds."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-chat")
    words = "system user assistant yes no who is calling friday price ana , . ?".split()
    vocab = {w: i for i, w in enumerate(["<unk>", "<|im_start|>", "<|im_end|>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.WhitespaceSplit(), decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>",
                                        pad_token="<unk>", additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> "
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tokenizer),
                                         max_position_embeddings=256, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


HANG_UP = "friday friday"  # an end-of-call marker made of the tiny chat model's words
HANG_UP_REPLY = "yes ana is calling"


@pytest.fixture(scope="session")
def hang_up_model(tmp_path_factory, tiny_chat_model) -> Path:
    """A LoRA on the tiny chat model that ends every call: trained in seconds on replies that close the call with
    the end-of-call marker HANG_UP (its card's split records it), so it answers HANG_UP_REPLY and hangs up."""
    from calltune.config import SplitConfig, TuneConfig
    from calltune.training.lora import train_lora

    tmp = tmp_path_factory.mktemp("hang-up-model")
    examples = [{**make_example(i, [], line, HANG_UP_REPLY), "end_of_call": HANG_UP}
                for i, line in enumerate(["who is calling ?", "price ?", "friday ?", "ana ?"])]
    cfg = TuneConfig(base_model=str(tiny_chat_model), max_steps=30, learning_rate=0.02, batch_size=4, max_seq_len=96,
                     lora_r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["all-linear"])
    train_lora(write_examples(tmp / "train.jsonl", examples), None, tmp / "model", cfg, seed=0,
               state_dir=tmp / "state", split=SplitConfig(end_of_call=HANG_UP))
    return tmp / "model"


# ---- browser: Debian's Chromium driven by Playwright (its own browser download is not reachable) ----
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium for the page and report tests. Skips where none is installed, except under CI, where
    a missing browser is a failure (`make test` installs Debian's chromium when it can)."""
    import os
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        if os.environ.get("CI"):
            pytest.fail("CI: no chromium executable; `make system` installs Debian's chromium")
        pytest.skip("no chromium executable (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


# Where tests leave files for people to look at (screenshots); Playwright creates the folder.
ARTIFACTS = Path(os.environ.get("CALLTUNE_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "out" / "test-artifacts")


# ---- graded calls for the coach: a company's export in miniature, whose checklist a seller's words decide ----
# criterion -> [(checklist item, the seller line that does it, the line said instead: as many words, so that only
# what is said tells them apart)]
SCORECARD = {
    "Opening and rapport": [("Asked whether the customer has time", "Do you have a minute to talk?",
                             "I am calling about your car insurance.")],
    "Qualifying": [("Asked about the current plan", "What plan do you have today?", "Our plan is the best around.")],
    "Next steps": [("Proposed a next step", "Can we schedule a call on Friday at ten?",
                    "Well, just think about it and let me know.")],
}
CUSTOMER_LINES = ["Hello?", "Who is calling?", "Hmm, I am not sure, it sounds expensive.", "Okay, sounds good."]


def graded_call(i: int, rng) -> dict:
    """One graded call (calltune.conversation.schema.Call with `evaluation`): each item done or not at random, the
    grade following from how many were done (plus a little noise), the export's feedback in its own shape."""
    done = {item: rng.random() < 0.5 for items in SCORECARD.values() for item, _, _ in items}
    seller = [yes if done[item] else no for items in SCORECARD.values() for item, yes, no in items]
    seller[0] = f"Hi, this is Bruno from Acme, call {i}. {seller[0]}"
    turns = []
    for n, line in enumerate(seller):
        turns += [{"role": "customer", "text": CUSTOMER_LINES[n % len(CUSTOMER_LINES)]}, {"role": "seller", "text": line}]
    turns.append({"role": "customer", "text": CUSTOMER_LINES[-1]})
    grade = min(10, max(0, 1 + 3 * sum(done.values()) + rng.choice([-1, 0, 0, 1])))
    feedbacks = [{"title": title, "summary": f"{title}: {'well done' if all(done[i] for i, _, _ in items) else 'missed'}"
                  f" in call {i}.", "checklist": [{"type": item, "status": done[item]} for item, _, _ in items]}
                 for title, items in SCORECARD.items()]
    return {"call_id": f"g{i:03d}", "source_row": i + 1, "persona": {}, "system": "You are Ana, a busy customer.",
            "turns": turns, "evaluation": {"grade": grade, "overview": f"Call {i} graded {grade}.",
                                           "positive": "Polite.", "negative": "Could ask more.", "feedbacks": feedbacks}}


def write_graded(folder: Path, n_train: int = 36, n_test: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """calls.jsonl and a splits folder (the call ids of train and test, as the sample step writes them)."""
    import random

    rng = random.Random(seed)
    calls = [graded_call(i, rng) for i in range(n_train + n_test)]
    folder.mkdir(parents=True, exist_ok=True)
    write_examples(folder / "calls.jsonl", calls)
    (folder / "splits").mkdir(exist_ok=True)
    for split, part in (("train", calls[:n_train]), ("test", calls[n_train:])):
        write_examples(folder / "splits" / f"{split}.examples.jsonl", [{"call_id": c["call_id"]} for c in part])
    return folder / "calls.jsonl", folder / "splits"


@pytest.fixture(scope="session")
def coach_dir(tmp_path_factory) -> Path:
    """The coach step's folder, built from the graded calls above."""
    from calltune.coaching.step import build_coach
    from calltune.config import CoachConfig

    folder = tmp_path_factory.mktemp("coach")
    calls, splits = write_graded(folder / "data")
    build_coach(calls, splits, folder / "coach", CoachConfig(bootstrap_samples=200), seed=0)
    return folder / "coach"


# ---- PostgreSQL: a throwaway cluster of Debian's server, one per test session, a fresh database per test ----
@pytest.fixture(scope="session")
def postgres():
    """Debian's PostgreSQL in a temporary folder, run as a non-root user (tests/team_harness.py: under root, as the
    `postgres` system user). Skips where the server is not installed, except under CI (`make test` installs it)."""
    from team_harness import PostgresMissing, postgres_cluster

    try:
        with postgres_cluster() as cluster:
            yield cluster
    except PostgresMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI: {exc}; `make system` installs Debian's postgresql")
        pytest.skip(str(exc))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """The same store test on both databases the practice history runs on: a SQLite file, and a new database on the
    session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'practice.sqlite'}"
    return request.getfixturevalue("postgres").new_database()
