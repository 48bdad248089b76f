"""serve.auth=iap's verifier (calltune.apps.serve.iap): IAP's signed assertion gives the caller's email only when it
is signed ES256 by a key of the key set served on loopback (as IAP serves its own), unexpired, from IAP's issuer and
for this service's audience; every other token is refused with a one-line reason. The key set is fetched once and
then read from the cache its Cache-Control allows."""
import base64
import json
import re

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from calltune.apps.serve.iap import IapError, IapKeysUnavailable, verify_iap_assertion

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
