"""serve.auth=iap's verifier (calltune.apps.serve.iap): IAP's signed assertion gives the caller's email only when it
is signed ES256 by a key of the key set served on loopback (as IAP serves its own), unexpired, from IAP's issuer and
for this service's audience; every other token is refused with a one-line reason. The key set is fetched once and
then read from the cache its Cache-Control allows. End to end, `calltune serve` with serve.auth=iap knows its callers
by that assertion alone (never the unsigned email header), and a seller signed in so sees only their own calls."""
import base64
import json
import re

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from calltune.apps.serve.app import serving
from calltune.apps.serve.iap import IapError, IapKeysUnavailable, verify_iap_assertion
from calltune.cli import main
from calltune.config import Config

from fakes.iap import AUDIENCE, FakeIapKeys


@pytest.fixture
def iap():
    with FakeIapKeys() as fake:
        yield fake


def verify(iap: FakeIapKeys, assertion: str, audience: str = AUDIENCE) -> str:
    return verify_iap_assertion(assertion, audience=audience, certs_url=iap.certs_url)


def test_a_signed_assertion_gives_its_email_and_the_keys_are_fetched_once(iap):
    for email in ("ana@example.com", "bruno@example.com", "ana@example.com"):
        assert verify(iap, iap.sign(email)) == email
    assert [r.path for r in iap.requests] == ["/iap/verify/public_key-jwk"]  # the cached key set served the others


def _unsigned(iap: FakeIapKeys) -> str:
    """A token IAP's header would carry, with its signature dropped and alg set to none."""
    header, payload, _ = iap.sign().split(".")
    none = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": "test-key"}).encode()).rstrip(b"=").decode()
    return f"{none}.{payload}."


@pytest.mark.parametrize("forge, reason", [
    (lambda iap: iap.sign(expires_in=-120), "the IAP assertion has expired"),
    (lambda iap: iap.sign(audience="/projects/123456789/locations/us-central1/services/other"),
     "for another audience than serve.iap_audience=/projects/123456789/locations/us-central1/services/calltune"),
    (lambda iap: iap.sign(issuer="https://accounts.google.com"),
     "issued by 'https://accounts.google.com', not by https://cloud.google.com/iap"),
    (_unsigned, "signed with 'none'; IAP signs with ES256"),
    (lambda iap: iap.sign(key=ec.generate_private_key(ec.SECP256R1())), "signature does not match IAP's public key"),
    (lambda iap: iap.sign(key=ec.generate_private_key(ec.SECP256R1()), kid="attacker"), "not in IAP's key set"),
    (lambda iap: iap.sign(key="a shared secret of 32 bytes or more", algorithm="HS256"), "signed with 'HS256'"),
    (lambda iap: iap.sign(email=""), "names no email"),
    (lambda iap: "ana@example.com", "not a JWT"),
])
def test_forged_expired_and_misdirected_assertions_are_refused_with_the_reason(iap, forge, reason):
    with pytest.raises(IapError, match=re.escape(reason)):
        verify(iap, forge(iap))


def test_no_assertion_or_no_audience_is_refused_before_anything_is_fetched(iap):
    with pytest.raises(IapError, match="no X-Goog-IAP-JWT-Assertion header"):
        verify(iap, "")
    with pytest.raises(IapError, match="serve.iap_audience is not set"):
        verify(iap, iap.sign(), audience="")
    assert iap.requests == []


def test_unreadable_keys_are_a_server_fault_not_a_refusal(iap):
    iap.inject(503)
    with pytest.raises(IapKeysUnavailable, match="cannot read IAP's public keys"):
        verify(iap, iap.sign())
    assert verify(iap, iap.sign()) == "ana@example.com"  # read again once IAP answers


def test_calltune_serve_behind_iap_knows_its_callers_by_the_signed_assertion_alone(iap, tmp_path):
    pytest.importorskip("google.genai")
    from test_serve import ENDPOINT, publish

    from fakes.vertex import FakeVertex

    cfg = Config(state_dir=str(tmp_path / "state"),
                 serve={"auth": "iap", "iap_audience": AUDIENCE, "iap_certs_url": iap.certs_url, "port": 0})
    assert main(["users", "add", "boss@example.com", "--manager", f"state_dir={cfg.state_dir}"]) == 0
    call = {"call_id": "practice-1", "turns": [{"role": "customer", "text": "Hello?"},
                                               {"role": "seller", "text": "Hi Ana, do you have a minute?"}]}
    with FakeVertex(lifetime_s=120) as vertex:
        publish(cfg.deploy, cfg.state_path(), ENDPOINT.format(111))
        serve = cfg.serve.model_copy(update={"vertex_base_url": vertex.endpoint})
        with serving(serve, cfg.deploy, cfg.state_path(), cfg.split, page=cfg) as url, \
                httpx.Client(base_url=url, timeout=60) as client:
            def as_(assertion: str, **headers) -> dict:
                return {"x-goog-iap-jwt-assertion": assertion, **headers}

            iap.inject(503)  # IAP's keys cannot be read: our fault, retry later
            down = client.get("/practice/api/setup", headers=as_(iap.sign("ana@example.com")))
            assert down.status_code == 503 and down.headers["retry-after"] and "IAP's public keys" in down.text

            unsigned_email = {"x-goog-authenticated-user-email": "accounts.google.com:boss@example.com"}
            for headers in ({}, unsigned_email, as_(iap.sign("boss@example.com", expires_in=-120)),
                            as_(iap.sign("boss@example.com", key=ec.generate_private_key(ec.SECP256R1())),
                                **unsigned_email)):
                refused = client.get("/practice/api/team", headers=headers)
                assert refused.status_code == 401, refused.text
            assert "has expired" in client.get("/v1/models", headers=as_(iap.sign(expires_in=-120))).text

            ana = as_(iap.sign("ana@example.com"))
            answer = client.post("/v1/chat/completions", headers=ana,
                                 json={"messages": [{"role": "user", "content": "Hi"}]})
            assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "111 says: Hi"
            assert client.post("/practice/api/calls", headers=ana, json=call).json()["stored"]
            assert client.post("/practice/api/calls", headers=ana,
                               json={**call, "seller": "bruno@example.com"}).status_code == 403
            mine = client.get("/practice/api/history", headers=ana).json()
            assert (mine["seller"], [c["call_id"] for c in mine["calls"]]) == ("ana@example.com", ["practice-1"])
            assert client.get("/practice/api/history?seller=boss@example.com", headers=ana).status_code == 403
            assert client.get("/practice/api/team", headers=ana).status_code == 403

            boss = as_(iap.sign("boss@example.com"))
            team = client.get("/practice/api/team", headers=boss)
            assert team.status_code == 200 and "ana@example.com" in team.text
            assert client.get("/practice/api/history?seller=ana@example.com", headers=boss).json()["calls"]
