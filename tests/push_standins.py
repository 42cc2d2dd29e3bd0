"""Local stand-ins for the push services, started by the tests (and the push benchmark) on
127.0.0.1 over TLS with a test CA:

- ``ApnsStandIn``: Apple's provider API on HTTP/2 (h2). Checks the ES256 provider token, the
  path, the apns-* headers and the JSON payload the way Apple documents them, and answers with
  the statuses a test scripts for each device token (200, 400, 410, 429...), optionally late.
- ``GoogleStandIn``: the FCM HTTP v1 ``messages:send`` endpoint and the OAuth2 token endpoint
  that grants it access for a signed service-account JWT.
- A Web Push endpoint (on the same server) that decrypts each message with the subscription's
  private key and auth secret (RFC 8291) and checks the VAPID header (RFC 8292).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import ipaddress
import json
import os
import secrets
import ssl
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import http_ece
import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded
from h2.settings import SettingCodes


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def pem_private(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


# --- TLS ----------------------------------------------------------------------------------------


@dataclass
class TestTLS:
    server: ssl.SSLContext
    ca_file: str

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    @classmethod
    def load(cls, directory: Path) -> TestTLS:
        """The TLS files ``make_tls`` wrote, for a stand-in in another process."""
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(directory / "server.pem", directory / "server.key")
        server.set_alpn_protocols(["h2", "http/1.1"])
        return cls(server, str(directory / "ca.pem"))


def make_tls(directory: Path) -> TestTLS:
    """A throwaway CA and a certificate for 127.0.0.1 and localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vabroker test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_text(pem_private(key))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    server.set_alpn_protocols(["h2", "http/1.1"])
    return TestTLS(server, str(ca_file))


async def wait_until(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll a condition every 10 ms until it holds; fail after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.01)


# --- APNs -------------------------------------------------------------------------------------


@dataclass
class ApnsCredentials:
    key_pem: str
    public_pem: str
    key_id: str = "ABC123DEFG"
    team_id: str = "TEAM123456"
    topic: str = "org.example.helper"

    @classmethod
    def generate(cls) -> ApnsCredentials:
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return cls(pem_private(key), public.decode())


@dataclass
class ApnsPush:
    """A request the APNs stand-in accepted as well formed."""

    token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    status: int


@dataclass
class ApnsStandIn:
    creds: ApnsCredentials
    tls: TestTLS
    delay_s: float = 0.0
    script: dict[str, list[int]] = field(default_factory=dict)  # token -> statuses, in turn
    pushes: list[ApnsPush] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # malformed requests, with Apple's reason
    in_flight: int = 0
    port: int = 0
    server: asyncio.Server | None = None
    answered: int = 0
    connections: set[_ApnsProtocol] = field(default_factory=set)
    verified: dict[str, dict[str, Any]] = field(default_factory=dict)
    connections_made: int = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: _ApnsProtocol(self), "127.0.0.1", 0, ssl=self.tls.server
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for protocol in list(self.connections):
                if protocol.transport is not None:
                    protocol.transport.close()
            await self.server.wait_closed()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def to(self, token: str) -> list[ApnsPush]:
        return [p for p in self.pushes if p.token == token]

    def check(self, headers: dict[str, str], body: bytes) -> tuple[int, str, ApnsPush | None]:
        """Apple's checks, in Apple's words (the ``reason`` strings of the provider API)."""
        if headers.get(":method") != "POST":
            return 405, "MethodNotAllowed", None
        path = headers.get(":path", "")
        if not path.startswith("/3/device/"):
            return 404, "BadPath", None
        token = path.removeprefix("/3/device/")
        scheme, _, provider_token = headers.get("authorization", "").partition(" ")
        if scheme != "bearer":
            return 403, "MissingProviderToken", None
        claims = self.verified.get(provider_token)
        if claims is None:  # like Apple, verify a provider token once, not on every push
            try:
                header = jwt.get_unverified_header(provider_token)
                claims = jwt.decode(provider_token, self.creds.public_pem, algorithms=["ES256"])
            except jwt.PyJWTError:
                return 403, "InvalidProviderToken", None
            if header.get("kid") != self.creds.key_id:
                return 403, "InvalidProviderToken", None
            self.verified[provider_token] = claims
        if claims.get("iss") != self.creds.team_id:
            return 403, "InvalidProviderToken", None
        if abs(time.time() - float(claims.get("iat", 0))) > 3600:
            return 403, "ExpiredProviderToken", None
        if not token or any(c not in "0123456789abcdef" for c in token):
            return 400, "BadDeviceToken", None
        topic = headers.get("apns-topic", "")
        push_type = headers.get("apns-push-type", "")
        if not topic:
            return 400, "MissingTopic", None
        if push_type not in ("alert", "voip", "background"):
            return 400, "InvalidPushType", None
        if (push_type == "voip") != topic.endswith(".voip"):
            return 400, "DeviceTokenNotForTopic", None
        if topic.removesuffix(".voip") != self.creds.topic:
            return 400, "TopicDisallowed", None
        if headers.get("apns-priority", "10") not in ("1", "5", "10"):
            return 400, "BadPriority", None
        expiration = headers.get("apns-expiration", "0")
        if not expiration.isdigit():
            return 400, "BadExpirationDate", None
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            return 400, "BadCollapseId", None
        if len(body) > (5120 if push_type == "voip" else 4096):
            return 413, "PayloadTooLarge", None
        try:
            payload = json.loads(body)
        except ValueError:
            return 400, "PayloadEmpty", None
        if not isinstance(payload, dict):
            return 400, "PayloadEmpty", None
        if push_type == "alert" and "alert" not in payload.get("aps", {}):
            return 400, "PayloadEmpty", None
        statuses = self.script.get(token)
        status = statuses.pop(0) if statuses else 200
        kept = {k: v for k, v in headers.items() if not k.startswith(":")}
        return status, "", ApnsPush(token, kept, payload, status)


_APNS_REASONS = {400: "BadDeviceToken", 410: "Unregistered", 429: "TooManyRequests"}


class _ApnsProtocol(asyncio.Protocol):
    def __init__(self, standin: ApnsStandIn) -> None:
        self.standin = standin
        # h2's generic RFC 9113 header checks are skipped to keep the stand-in fast enough
        # for the fan-out benchmark; ``check`` does Apple's own checks on every request.
        self.conn = H2Connection(
            H2Configuration(
                client_side=False,
                header_encoding="utf-8",
                validate_inbound_headers=False,
                validate_outbound_headers=False,
            )
        )
        self.conn.encoder.encode = functools.partial(
            type(self.conn.encoder).encode, self.conn.encoder, huffman=False
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.standin.connections.add(self)
        self.standin.connections_made += 1
        self.conn.initiate_connection()
        # Like Apple's servers: many streams, and windows large enough for them all at once.
        self.conn.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: 1000, SettingCodes.INITIAL_WINDOW_SIZE: 2**20}
        )
        self.conn.increment_flow_control_window(2**24)
        transport.write(self.conn.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.standin.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, RequestReceived):
                self.streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
            elif isinstance(event, DataReceived):
                self.streams[event.stream_id][1].extend(event.data)
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                headers, body = self.streams.pop(event.stream_id)
                self.answer(event.stream_id, headers, bytes(body))
            elif isinstance(event, ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self.flush()

    def flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def answer(self, stream_id: int, headers: dict[str, str], body: bytes) -> None:
        standin = self.standin
        status, reason, push = standin.check(headers, body)
        if push is not None:
            standin.pushes.append(push)
            reason = _APNS_REASONS.get(status, "InternalServerError") if status != 200 else ""
        else:
            standin.problems.append(reason)
        apns_id = headers.get("apns-id") or secrets.token_hex(16)
        standin.in_flight += 1

        def respond() -> None:
            standin.in_flight -= 1
            standin.answered += 1
            if self.transport is None or self.transport.is_closing():
                return
            reply = [(":status", str(status)), ("apns-id", apns_id)]
            if status == 200:
                self.conn.send_headers(stream_id, reply, end_stream=True)
            else:
                data: dict[str, Any] = {"reason": reason}
                if status == 410:
                    data["timestamp"] = int(time.time() * 1000)
                self.conn.send_headers(stream_id, reply)
                self.conn.send_data(stream_id, json.dumps(data).encode(), end_stream=True)

        def respond_late() -> None:
            respond()
            self.flush()

        if standin.delay_s > 0:
            asyncio.get_running_loop().call_later(standin.delay_s, respond_late)
        else:
            respond()  # data_received flushes once for everything it answered


# --- FCM, OAuth and Web Push --------------------------------------------------------------------


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    """One RSA key per test process: generating one takes a noticeable fraction of a second."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class FcmCredentials:
    key: rsa.RSAPrivateKey
    project_id: str = "vabroker-test"
    client_email: str = "pusher@vabroker-test.iam.gserviceaccount.com"

    @classmethod
    def generate(cls) -> FcmCredentials:
        return cls(_rsa_key())

    def write(self, path: Path, token_uri: str) -> str:
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": self.project_id,
                    "client_email": self.client_email,
                    "private_key": pem_private(self.key),
                    "token_uri": token_uri,
                }
            )
        )
        return str(path)


@dataclass
class WebPushSubscriber:
    """A browser's side of a subscription: its key pair and auth secret."""

    endpoint: str
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    auth: bytes = field(default_factory=lambda: os.urandom(16))

    def subscription(self) -> dict[str, Any]:
        public = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint,
            "keys": {"p256dh": b64url(public), "auth": b64url(self.auth)},
        }


@dataclass
class GoogleStandIn:
    """FCM v1 + OAuth token endpoint + Web Push endpoints, on one TLS server."""

    fcm: FcmCredentials
    tls: TestTLS
    token_lifetime_s: int = 3600
    fcm_script: dict[str, list[int]] = field(default_factory=dict)
    fcm_messages: list[dict[str, Any]] = field(default_factory=list)
    tokens_granted: int = 0
    webpush_script: dict[str, list[int]] = field(default_factory=dict)
    subscribers: dict[str, WebPushSubscriber] = field(default_factory=dict)
    webpush_messages: dict[str, list[tuple[dict[str, str], dict[str, Any]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    problems: list[str] = field(default_factory=list)
    vapid_public: str | None = None  # base64url, to check the k= of the VAPID header
    port: int = 0
    _access: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        app.router.add_post("/push/{id}", self._webpush)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls.server)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def subscriber(self) -> WebPushSubscriber:
        sub_id = secrets.token_urlsafe(8)
        sub = WebPushSubscriber(f"{self.base_url}/push/{sub_id}")
        self.subscribers[sub_id] = sub
        return sub

    def to(self, token: str) -> list[dict[str, Any]]:
        return [m for m in self.fcm_messages if m["token"] == token]

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        public = self.fcm.key.public_key()
        try:
            claims = jwt.decode(
                str(form.get("assertion", "")),
                public,
                algorithms=["RS256"],
                audience=f"{self.base_url}/token",
                issuer=self.fcm.client_email,
            )
        except jwt.PyJWTError as exc:
            self.problems.append(f"token: {exc}")
            return web.json_response({"error": "invalid_grant"}, status=400)
        if claims.get("scope") != "https://www.googleapis.com/auth/firebase.messaging":
            return web.json_response({"error": "invalid_scope"}, status=400)
        access = "ya29." + secrets.token_urlsafe(24)
        self._access.add(access)
        self.tokens_granted += 1
        return web.json_response(
            {"access_token": access, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        )

    async def _send(self, request: web.Request) -> web.Response:
        if request.match_info["project"] != self.fcm.project_id:
            return _fcm_error(404, "NOT_FOUND", None)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self._access:
            return _fcm_error(401, "UNAUTHENTICATED", None)
        body = await request.json()
        message = body.get("message", {}) if isinstance(body, dict) else {}
        data = message.get("data", {})
        android = message.get("android", {})
        if (
            not isinstance(message.get("token"), str)
            or not isinstance(data, dict)
            or not all(isinstance(v, str) for v in data.values())
            or android.get("priority") not in ("HIGH", "NORMAL")
            or not str(android.get("ttl", "")).endswith("s")
        ):
            self.problems.append(f"fcm: malformed {body}")
            return _fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT")
        statuses = self.fcm_script.get(message["token"])
        status = statuses.pop(0) if statuses else 200
        self.fcm_messages.append({**message, "status": status})
        if status == 200:
            name = f"projects/{self.fcm.project_id}/messages/{secrets.token_hex(8)}"
            return web.json_response({"name": name})
        if status == 404:
            return _fcm_error(404, "NOT_FOUND", "UNREGISTERED")
        if status == 429:
            return _fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
        return _fcm_error(status, "UNAVAILABLE", "UNAVAILABLE")

    async def _webpush(self, request: web.Request) -> web.Response:
        sub = self.subscribers.get(request.match_info["id"])
        if sub is None:
            return web.Response(status=410, text="subscription gone")
        headers = {k: v for k, v in request.headers.items()}
        problem = self._check_vapid(headers.get("Authorization", ""))
        if problem:
            self.problems.append(f"webpush: {problem}")
            return web.Response(status=401, text=problem)
        if headers.get("Content-Encoding") != "aes128gcm" or "TTL" not in headers:
            self.problems.append("webpush: missing Content-Encoding or TTL")
            return web.Response(status=400)
        body = await request.read()
        try:
            plain = http_ece.decrypt(
                body, private_key=sub.key, auth_secret=sub.auth, version="aes128gcm"
            )
            payload = json.loads(plain)
        except Exception as exc:
            self.problems.append(f"webpush: cannot decrypt: {exc!r}")
            return web.Response(status=400, text="cannot decrypt")
        statuses = self.webpush_script.get(request.match_info["id"])
        status = statuses.pop(0) if statuses else 201
        self.webpush_messages[request.match_info["id"]].append((headers, payload))
        return web.Response(status=status)

    def _check_vapid(self, header: str) -> str:
        scheme, _, params = header.partition(" ")
        if scheme != "vapid":
            return "Authorization is not vapid"
        fields = dict(p.strip().split("=", 1) for p in params.split(",") if "=" in p)
        key_text = fields.get("k", "")
        if self.vapid_public is not None and key_text != self.vapid_public:
            return "k= is not the server's VAPID key"
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b64url_decode(key_text)
            )
            claims = jwt.decode(
                fields.get("t", ""), public, algorithms=["ES256"], audience=self.base_url
            )
        except (ValueError, jwt.PyJWTError) as exc:
            return f"bad VAPID token: {exc}"
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            return "VAPID sub is not mailto: or https:"
        if float(claims.get("exp", 0)) > time.time() + 86400:
            return "VAPID token lives longer than 24 h"
        return ""


def _fcm_error(status: int, code: str, detail: str | None) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": code.lower(), "status": code}
    if detail:
        error["details"] = [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": detail}
        ]
    return web.json_response({"error": error}, status=status)
