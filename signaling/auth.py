"""Tokens: verifying the JWTs users sign in with, and minting development tokens.

The broker only verifies. A deployment's identity provider mints tokens; ``vabroker token``
mints them for development and tests with the configured HS256 secret.

Three kinds of key, any of them at once: a shared HS256 secret, one fixed public key (PEM), and
an OpenID Connect provider's key set (JWKS) fetched from its URL. A token names its key by
``kid``; a ``kid`` the broker has not seen makes it fetch the set again (the provider rotated its
keys), but no more often than ``refetch_s``, so a stream of tokens with made-up ``kid`` values
costs the provider one request per interval, not one per token.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from broker.model import Language, PlainText, Role, TimeZone

log = logging.getLogger("vabroker.auth")

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


class KeySet:
    """An identity provider's signing keys, fetched from its JWKS URL and kept by ``kid``.

    ``key`` never does I/O: it answers from what was fetched. ``ensure`` fetches when a ``kid``
    is unknown or the set is older than ``max_age_s``, at most once per ``refetch_s`` however
    many tokens ask, and all the tokens that arrive during one fetch wait for that one fetch.
    """

    def __init__(
        self,
        url: str,
        refetch_s: float = 60.0,
        max_age_s: float = 3600.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.refetch_s = refetch_s
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.fetches = 0  # requests made to the provider (tests, logs)
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last attempt, successful or not
        self._fetch: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def key(self, kid: str) -> jwt.PyJWK | None:
        return self._keys.get(kid)

    def _may_fetch(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self.refetch_s

    async def ensure(self, kid: str) -> None:
        """Fetch the set if ``kid`` is unknown or the set is stale, unless a fetch was made in
        the last ``refetch_s``. Errors are logged and leave the keys as they were."""
        stale = self._fetched_at is None or self._clock() - self._fetched_at >= self.max_age_s
        if kid in self._keys and not stale:
            return
        if self._fetch is None:
            if not self._may_fetch():
                return
            self._fetch = asyncio.get_running_loop().create_task(self._refresh())
        fetch = self._fetch
        try:
            await asyncio.shield(fetch)
        finally:
            if fetch.done() and self._fetch is fetch:
                self._fetch = None

    async def _refresh(self) -> None:
        self._fetched_at = self._clock()
        self.fetches += 1
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=True)
        try:
            async with self._session.get(
                self.url,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                allow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                data = await response.json(content_type=None)
            keys = parse_jwks(data)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            log.warning(
                "identity provider keys not fetched",
                extra={"url": self.url, "why": f"{type(exc).__name__}: {exc}"},
            )
            return
        self._keys = keys
        log.info("identity provider keys fetched", extra={"url": self.url, "kids": sorted(keys)})

    async def close(self) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None


def parse_jwks(data: Any) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document, by ``kid``. Keys without a ``kid``, meant for
    encryption, or of a type PyJWT cannot use are left out; a document with no usable key is
    an error (ValueError), so that a broken answer never replaces working keys."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: dict[str, jwt.PyJWK] = {}
    for entry in data["keys"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            keys[entry["kid"]] = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, KeyError, ValueError, TypeError):
            continue
    if not keys:
        raise ValueError("the JWKS document has no usable signing key with a 'kid'")
    return keys


class Authenticator:
    def __init__(
        self,
        secret: str | None = None,
        public_key: str | None = None,
        algorithms: list[str] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway_s: float = 30.0,
        jwks: KeySet | None = None,
    ) -> None:
        if secret is None and public_key is None and jwks is None:
            raise ValueError(
                "an HS256 secret, a public key or a JWKS URL is required: unsigned tokens are "
                "never accepted"
            )
        self.secret = secret
        self.public_key = public_key
        self.jwks = jwks
        self.algorithms = algorithms or ["HS256"]
        self.audience = audience
        self.issuer = issuer
        self.leeway_s = leeway_s
        # With one algorithm and no key set, the key does not depend on the token's header.
        self._sole_key: Any = (
            self._key_for({"alg": self.algorithms[0]})
            if jwks is None and len(self.algorithms) == 1
            else None
        )

    async def check(self, token: str) -> Claims:
        """``verify``, after fetching the identity provider's keys if the token names a key
        not seen yet (without blocking the event loop)."""
        if self.jwks is not None:
            try:
                kid = jwt.get_unverified_header(token).get("kid")
            except jwt.PyJWTError:
                kid = None
            if isinstance(kid, str) and kid:
                await self.jwks.ensure(kid)
        return self.verify(token)

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    def _key_for(self, header: dict[str, Any]) -> Any:
        alg = header.get("alg")
        if alg == "HS256":
            return self.secret
        kid = header.get("kid")
        if self.jwks is not None and isinstance(kid, str):
            jwk = self.jwks.key(kid)
            if jwk is not None:
                if jwk.algorithm_name != alg:
                    raise AuthError(f"The token's key {kid!r} is not a key for {alg!r}.")
                return jwk.key
            if self.public_key is None:
                raise AuthError(
                    f"The token's key {kid!r} is not one of the identity provider's keys."
                )
        if self.jwks is not None and self.public_key is None and not isinstance(kid, str):
            raise AuthError("The token does not name its key (no 'kid' in its header).")
        return self.public_key

    def verify(self, token: str) -> Claims:
        """The token's claims, checked against the keys at hand (no I/O)."""
        key, algorithms = self._sole_key, self.algorithms
        sole = key is not None
        if not sole:
            header = self._accepted_header(token)
            key, algorithms = self._key_for(header), [header["alg"]]
            if key is None:
                raise AuthError(f"Tokens signed with {header['alg']!r} are not accepted.")
        # With a sole key the header is not read first (a third of the work of a valid token):
        # PyJWT refuses any other algorithm, and the header is read only to say why.
        try:
            payload = self._decode(token, key, algorithms)
        except jwt.ExpiredSignatureError:
            raise AuthError("The token has expired; sign in again.") from None
        except jwt.InvalidSignatureError:
            raise AuthError("The token's signature is not valid.") from None
        except jwt.PyJWTError as exc:
            if sole:
                self._accepted_header(token)  # not a JWT, or an algorithm not accepted
            raise AuthError(f"The token is not valid: {exc}.") from None
        return self._claims(payload)

    def _accepted_header(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("The token is not a JWT.") from None
        if header.get("alg") not in self.algorithms:
            raise AuthError(f"Tokens signed with {header.get('alg')!r} are not accepted.")
        return header

    def _decode(self, token: str, key: Any, algorithms: list[str]) -> dict[str, Any]:
        payload: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway_s,
            options={"require": ["sub", "exp"], "verify_aud": self.audience is not None},
        )
        return payload

    def _claims(self, payload: dict[str, Any]) -> Claims:
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
