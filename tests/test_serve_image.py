"""The app image carries no torch (images/Dockerfile.serve, pyproject's `serve` extra), and needs none:

- `calltune serve` of a model on a Vertex endpoint, started as the image starts it, answers the API and the practice
  page (a practice call reviewed by the coach and stored) without torch or transformers ever reaching sys.modules;
- the `serve` extra's dependency closure holds no torch. It is read offline from the requirement metadata of the
  installed distributions (the lock's versions: `make install` installs with -c lock/requirements.txt), markers
  evaluated for the lock's target, each dependency's extras followed; the same walk finds torch in `local`.

The coach's review with a trained coach (scikit-learn on TF-IDF) imports no torch either:
tests/test_coach.py::test_the_review_needs_no_torch.
"""
import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from test_lock import TARGET, pins
from test_serve import ENDPOINT, cli_server, publish, reply, request

from calltune.config import DeployConfig

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
TORCH = {"torch", "transformers", "triton", "accelerate", "peft", "sentence-transformers", "trl"}
# Starts `calltune serve` as the image's CMD does, and says on the way out which torch modules were ever imported.
PROGRAM = """
import sys
from calltune.cli import main
try:
    code = main(sys.argv[1:])
finally:
    print("LOADED", sorted(m for m in sys.modules if m.partition(".")[0] in ("torch", "transformers")), flush=True)
sys.exit(code)
"""


def closure(extra: str) -> dict[str, str]:
    """{distribution: the distribution that required it} for everything `calltune[extra]` installs."""
    found: dict[str, str] = {}
    todo = [(Requirement(text), "calltune") for text in EXTRAS[extra]]
    while todo:
        req, parent = todo.pop()
        name = canonicalize_name(req.name)
        if req.marker and not req.marker.evaluate({**TARGET, "extra": ""}):
            continue
        extras = sorted(req.extras)
        key = f"{name}[{','.join(extras)}]"
        if key in found:
            continue
        found[key] = parent
        found.setdefault(name, parent)
        for text in importlib.metadata.distribution(name).requires or []:
            sub = Requirement(text)
            if sub.marker and not any(sub.marker.evaluate({**TARGET, "extra": e}) for e in ["", *extras]):
                continue
            todo.append((sub, name))
    return {k: v for k, v in found.items() if "[" not in k}


def test_the_serve_extra_installs_no_torch_at_the_locked_versions():
    needed = closure("serve")
    assert {"fastapi", "uvicorn", "sqlalchemy", "scikit-learn", "google-auth", "pyjwt", "cryptography",
            "google-cloud-aiplatform"} <= set(needed)  # the walk reaches the app's needs, and theirs
    assert {n: needed[n] for n in TORCH & set(needed)} == {}, "the app image would carry torch"
    assert "torch" in closure("local")  # the same walk does find torch where it is
    locked = pins((ROOT / "lock" / "requirements.txt").read_text())
    assert sorted(set(needed) - set(locked)) == []  # every one of them is pinned: the image installs those versions


@pytest.fixture
def vertex():
    pytest.importorskip("google.genai")
    from fakes.vertex import FakeVertex

    with FakeVertex(lifetime_s=120) as fake:
        yield fake


def test_serving_an_endpoint_model_and_reviewing_a_practice_call_imports_no_torch(tmp_path, vertex):
    publish(DeployConfig(), tmp_path, ENDPOINT.format(111))
    with cli_server("--vertex-base-url", vertex.endpoint, f"state_dir={tmp_path}", program=("-c", PROGRAM)) as server:
        url = server.url
        assert reply(url, [{"role": "user", "content": "Hi"}]) == ("llm-endpoint/versions/1", "111 says: Hi")
        assert request(url, "/practice/api/setup").status_code == 200
        call = {"turns": [{"role": "customer", "text": "Hello?"}, {"role": "seller", "text": "Hi Ana, do you have a "
                                                                                         "minute to talk?"}],
                "seller": "Ana Lima", "call_id": "practice-1"}
        filed = request(url, "/practice/api/calls", call)
        assert filed.status_code == 200 and filed.json()["stored"], filed.text
        assert filed.json()["review"]["analytics"]  # the coach's analytics of the call
        history = request(url, "/practice/api/history?seller=Ana%20Lima")
        assert [c["call_id"] for c in history.json()["calls"]] == ["practice-1"]
    assert "LOADED []" in server.out, server.out[-3000:]
