"""Who is calling, behind Identity-Aware Proxy (Cloud Run with `--iap`, or a load balancer with IAP on): the signed
JWT IAP adds to every request it lets through, `X-Goog-IAP-JWT-Assertion`, verified as
https://cloud.google.com/iap/docs/signed-headers-howto asks: signed ES256 by one of IAP's public keys (the JWK set at
serve.iap_certs_url), not expired, issued by https://cloud.google.com/iap, for this service's audience
(serve.iap_audience). The unsigned `X-Goog-Authenticated-User-Email` header is never read: anyone who reaches the
service some other way can write it.

google-auth verifies the token (google.oauth2.id_token.verify_token, with PyJWT for the JWK format); the key set is
fetched through a CacheControl session, as google-auth's documentation advises, so it is read again only when IAP's
Cache-Control says it has gone stale, not on every request.
"""
from __future__ import annotations

import functools

import jwt
from google.auth import exceptions as auth_exceptions
from google.auth.transport.requests import Request
from google.oauth2 import id_token

ISSUER = "https://cloud.google.com/iap"
ALGORITHM = "ES256"


class IapError(ValueError):
    """An assertion that proves nothing: the message says why in one line (never the token itself)."""


class IapKeysUnavailable(RuntimeError):
    """IAP's public keys cannot be read now (the caller may be fine: answer 503 and let them retry)."""


@functools.cache
def _request() -> Request:
    """One HTTP transport for the process, caching the key set as its Cache-Control allows (thread-safe)."""
    import cachecontrol
    import requests

    return Request(session=cachecontrol.CacheControl(requests.Session()))


def verify_iap_assertion(assertion: str, *, audience: str, certs_url: str) -> str:
    """The email IAP signed into `assertion` (the `X-Goog-IAP-JWT-Assertion` header's value). IapError when the
    token is missing, malformed, unsigned or signed by another key or algorithm, expired, for another audience or
    from another issuer, or names no email; IapKeysUnavailable when IAP's key set cannot be read."""
    if not audience:
        raise IapError("serve.iap_audience is not set, so no IAP assertion can be checked")
    if not assertion:
        raise IapError("no X-Goog-IAP-JWT-Assertion header: the request did not come through Identity-Aware Proxy")
    try:
        algorithm = jwt.get_unverified_header(assertion).get("alg")
    except jwt.DecodeError:
        raise IapError("the IAP assertion is not a JWT") from None
    if algorithm != ALGORITHM:  # "none" included: an unsigned token is never read
        raise IapError(f"the IAP assertion is signed with {algorithm!r}; IAP signs with {ALGORITHM}")
    try:
        claims = id_token.verify_token(assertion, _request(), audience=audience, certs_url=certs_url)
    except auth_exceptions.TransportError as exc:
        raise IapKeysUnavailable(f"cannot read IAP's public keys from {certs_url}: {exc}") from None
    except jwt.ExpiredSignatureError:
        raise IapError("the IAP assertion has expired") from None
    except jwt.ImmatureSignatureError:
        raise IapError("the IAP assertion is not valid yet (issued in the future)") from None
    except jwt.InvalidAudienceError:
        raise IapError(f"the IAP assertion is for another audience than serve.iap_audience={audience}") from None
    except jwt.InvalidSignatureError:
        raise IapError("the IAP assertion's signature does not match IAP's public key") from None
    except jwt.PyJWKClientError:
        raise IapError("the IAP assertion is signed by a key that is not in IAP's key set") from None
    except (jwt.PyJWTError, ValueError) as exc:  # a malformed payload, a missing claim
        raise IapError(f"the IAP assertion is invalid: {type(exc).__name__}") from None
    if "exp" not in claims:  # PyJWT checks an expiry only when there is one
        raise IapError("the IAP assertion has no expiry")
    if claims.get("iss") != ISSUER:
        raise IapError(f"the IAP assertion was issued by {claims.get('iss')!r}, not by {ISSUER}")
    email = claims.get("email")
    if not isinstance(email, str) or not email:
        raise IapError("the IAP assertion names no email")
    return email
