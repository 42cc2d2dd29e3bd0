"""Tokens: verifying the JWTs users sign in with, and minting development tokens.

The broker only verifies. A deployment's identity provider mints tokens; ``vabroker token``
mints them for development and tests with the configured HS256 secret.
"""

from __future__ import annotations

import re
import time
from typing import Any

import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker.model import Language, PlainText, Role, TimeZone

USER_ID = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}$")


class AuthError(Exception):
    """Why a token was refused, in words a person understands."""


class Claims(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    sub: str
    role: Role
    org: str | None = Field(default=None, max_length=64)
    name: PlainText | None = Field(default=None, max_length=120)
    exp: float  # NumericDate: RFC 7519 allows a fraction
    # When the token was issued; a revocation of the user's sign-ins refuses tokens issued
    # before it (and tokens without ``iat``, which cannot show they came after).
    iat: float | None = None
    # OpenID Connect's own claims for a first profile: locale (BCP 47) and zoneinfo (IANA).
    locale: Language | None = None
    zoneinfo: TimeZone | None = None
    languages: list[Language] | None = Field(default=None, max_length=10)

    @field_validator("sub")
    @classmethod
    def _sub(cls, value: str) -> str:
        if not USER_ID.match(value):
            raise ValueError("sub must be 1-128 letters, digits or ._:@+-")
        return value


class Authenticator:
    def __init__(
        self,
        secret: str | None = None,
        public_key: str | None = None,
        algorithms: list[str] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 30.0,
    ) -> None:
        if secret is None and public_key is None:
            raise ValueError(
                "an HS256 secret or a public key is required: unsigned tokens are never accepted"
            )
        self.secret = secret
        self.public_key = public_key
        self.algorithms = algorithms or ["HS256"]
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s

    def verify(self, token: str) -> Claims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("The token is not a JWT.") from None
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise AuthError(f"Tokens signed with {alg!r} are not accepted.")
        key = self.secret if alg == "HS256" else self.public_key
        if key is None:
            raise AuthError(f"Tokens signed with {alg!r} are not accepted.")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={"require": ["sub", "exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("The token has expired; sign in again.") from None
        except jwt.InvalidSignatureError:
            raise AuthError("The token's signature is not valid.") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"The token is not valid: {exc}.") from None
        try:
            claims = Claims.model_validate(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise AuthError(f"The token's claim {where!r} is not valid: {first['msg']}.") from None
        if claims.role is Role.AGENT and not claims.org:
            raise AuthError("An agent's token must name its organisation in the 'org' claim.")
        return claims


def revoked(claims: Claims, revoked_before: float | None) -> bool:
    """Whether a revocation of the user's sign-ins (``Store.revoked_before``) covers this
    token: it was issued before the revocation time, or carries no ``iat`` at all."""
    if revoked_before is None:
        return False
    return claims.iat is None or claims.iat < revoked_before


def mint(
    secret: str,
    sub: str,
    role: Role | str,
    name: str | None = None,
    org: str | None = None,
    languages: list[str] | None = None,
    timezone: str | None = None,
    ttl_s: float = 86400.0,
    now: float | None = None,
) -> str:
    """An HS256 development token. Production tokens come from the identity provider."""
    issued = int(now if now is not None else time.time())
    payload: dict[str, Any] = {
        "sub": sub,
        "role": str(Role(role)),
        "iat": issued,
        "exp": issued + int(ttl_s),
    }
    if name:
        payload["name"] = name
    if org:
        payload["org"] = org
    if languages:
        payload["languages"] = languages
        payload["locale"] = languages[0]
    if timezone:
        payload["zoneinfo"] = timezone
    return jwt.encode(payload, secret, algorithm="HS256")
