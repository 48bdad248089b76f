"""Identity-Aware Proxy's side of a signed request, on loopback: a local EC P-256 key (kid "test-key") whose JWK set
is served as IAP serves https://www.gstatic.com/iap/verify/public_key-jwk (with a Cache-Control max-age), and
`sign()`, which writes the X-Goog-IAP-JWT-Assertion IAP would send, or any forgery of it."""
from __future__ import annotations

import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from . import FakeGoogleApi

KID = "test-key"
ISSUER = "https://cloud.google.com/iap"
AUDIENCE = "/projects/123456789/locations/us-central1/services/calltune"


class FakeIapKeys(FakeGoogleApi):
    routes = [("GET", r"/iap/verify/public_key-jwk", "key_set")]

    def __init__(self, **kw):
        super().__init__(**kw)
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def certs_url(self) -> str:
        return f"{self.endpoint}/iap/verify/public_key-jwk"

    def key_set(self, match, body) -> dict:
        jwk = ECAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": KID, "alg": "ES256", "use": "sig"}]}

    def _answer(self, status, payload):
        status, headers, data = super()._answer(status, payload)
        if status == 200:  # as gstatic.com answers: clients may keep the keys this long
            headers["Cache-Control"] = "public, max-age=3600"
        return status, headers, data

    def sign(self, email: str = "ana@example.com", *, audience: str = AUDIENCE, issuer: str = ISSUER,
             expires_in: float = 600, key=None, algorithm: str = "ES256", kid: str = KID, **claims) -> str:
        """An assertion as IAP signs it; each argument bends one part (another key, algorithm, audience...)."""
        now = int(time.time())
        payload = {"iss": issuer, "aud": audience, "email": email, "sub": f"accounts.google.com:{email}",
                   "iat": now - 5, "exp": now + int(expires_in), **claims}
        return jwt.encode(payload, self.key if key is None else key, algorithm=algorithm, headers={"kid": kid})
