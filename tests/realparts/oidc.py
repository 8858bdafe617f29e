"""Run a real OpenID provider (npm `oidc-provider` 9.13.3) for the test suite.

The provider is `tests/oidc/provider.mjs`, run by Node with the packages `npm ci` put in
`tests/oidc/node_modules` (`deploy/bootstrap.sh` does that). `run_oidc_provider()` starts it
on a free loopback port with issuer `http://127.0.0.1:PORT` (no trailing slash: the
discovery document's `issuer` is exactly that string), one resource server (the gateway's
`audience`) and a few `client_credentials` clients, and stops it afterwards.

Access tokens are RS256 JWTs (header `typ: at+jwt`, `kid` from the provider's JWKS, which
is regenerated at every start) with `iss`, `aud` (= audience, a string), `sub` and
`client_id` (both the client id), `scope` (space separated, absent when no scope was
granted), `iat`, `exp` and `jti`. A requested scope the provider does not know is dropped
from the grant, not refused. A client may sign with ES256, PS256 or EdDSA instead (`alg`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Literal
from urllib.parse import quote

import aiohttp

from .process import free_port, log_tail, stop_process, wait_for_interrupt

REPO_ROOT = Path(__file__).resolve().parents[2]
OIDC_DIR = REPO_ROOT / "tests" / "oidc"
PROVIDER_SCRIPT = OIDC_DIR / "provider.mjs"
NODE_MODULES = OIDC_DIR / "node_modules"
NODE_ENV_VAR = "LRS_GATEWAY_NODE"

START_TIMEOUT = 30.0
DEFAULT_ACCESS_TOKEN_TTL = 300

AuthMethod = Literal["client_secret_basic", "client_secret_post"]
SigningAlg = Literal["RS256", "PS256", "ES256", "EdDSA"]


class OidcError(RuntimeError):
    """The provider could not be found or started."""


class OidcTokenError(RuntimeError):
    """The token endpoint refused a request (its status and body are kept)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"token endpoint answered {status}: {body}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class OidcClient:
    """A `client_credentials` client registered with the provider."""

    client_id: str
    client_secret: str
    access_token_ttl: int = DEFAULT_ACCESS_TOKEN_TTL
    """Lifetime of its access tokens, seconds (`exp - iat`)."""
    auth_method: AuthMethod = "client_secret_basic"
    """How `OidcProvider.token` authenticates it (the provider accepts either)."""
    alg: SigningAlg = "RS256"
    """The JWS algorithm of its access tokens."""
    scopes: tuple[str, ...] | None = None
    """Scopes it may be granted (others are dropped); None: every configured scope."""


@dataclass(frozen=True)
class OidcPublicClient:
    """An Authorization Code + PKCE client (no secret), for people signing in."""

    client_id: str
    redirect_uris: tuple[str, ...] = ("http://127.0.0.1/admin/callback",)
    """Loopback URIs match on any port (a native client, RFC 8252)."""
    scopes: tuple[str, ...] | None = None
    """Resource scopes it may be granted (others are dropped); None: every configured scope."""


@dataclass(frozen=True)
class OidcProvider:
    """A running OpenID provider and the clients registered with it."""

    issuer: str
    """`http://127.0.0.1:PORT`, exactly as the discovery document and tokens carry it."""
    discovery_url: str
    jwks_uri: str
    token_endpoint: str
    audience: str
    """The gateway's audience: the only resource, and every token's `aud`."""
    scopes: tuple[str, ...]
    clients: Mapping[str, OidcClient]
    log_file: Path

    async def token_response(
        self,
        client_id: str,
        scope: str,
        session: aiohttp.ClientSession | None = None,
        *,
        resource: str | None = None,
    ) -> dict[str, Any]:
        """Run the `client_credentials` grant; return the token endpoint's JSON answer.

        `scope` is space separated ("" asks for none); `resource` defaults to the audience.
        Raises `OidcTokenError` when the endpoint does not answer 200.
        """
        client = self.clients[client_id]
        form = {
            "grant_type": "client_credentials",
            "resource": self.audience if resource is None else resource,
        }
        if scope:
            form["scope"] = scope
        headers = {"Accept": "application/json"}
        if client.auth_method == "client_secret_basic":
            headers["Authorization"] = _basic(client.client_id, client.client_secret)
        else:
            form["client_id"] = client.client_id
            form["client_secret"] = client.client_secret
        if session is None:
            async with aiohttp.ClientSession() as own_session:
                return await _post_token(own_session, self.token_endpoint, form, headers)
        return await _post_token(session, self.token_endpoint, form, headers)

    async def token(
        self, client_id: str, scope: str, session: aiohttp.ClientSession | None = None
    ) -> str:
        """Return a fresh access token (a JWT) for `client_id` with the requested `scope`."""
        answer = await self.token_response(client_id, scope, session)
        access_token = answer.get("access_token")
        if not isinstance(access_token, str):
            raise OidcTokenError(200, json.dumps(answer))
        return access_token


def _basic(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: form-urlencode both parts, then Basic (aiohttp's BasicAuth warns)."""
    user_pass = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(user_pass.encode()).decode("ascii")


async def _post_token(
    session: aiohttp.ClientSession, url: str, form: dict[str, str], headers: dict[str, str]
) -> dict[str, Any]:
    async with session.post(url, data=form, headers=headers) as response:
        body = await response.text()
        if response.status != 200:
            raise OidcTokenError(response.status, body)
    answer: dict[str, Any] = json.loads(body)
    return answer


def node_executable() -> Path:
    """Return Node (`$LRS_GATEWAY_NODE`, else `node` on PATH) or raise `OidcError`."""
    configured = os.environ.get(NODE_ENV_VAR)
    found = configured or shutil.which("node")
    if not found or not Path(found).exists():
        raise OidcError(
            "Node.js not found (looked at "
            + (f"${NODE_ENV_VAR}={configured}" if configured else "`node` on PATH")
            + "); the OIDC tests need Node >= 20 and npm to run tests/oidc/provider.mjs."
        )
    return Path(found)


def check_installed() -> None:
    """Raise `OidcError` saying what to do when `npm ci` has not been run in tests/oidc."""
    if not (NODE_MODULES / "oidc-provider" / "package.json").is_file():
        raise OidcError(
            f"{NODE_MODULES} has no oidc-provider. Run `bash deploy/bootstrap.sh` from the "
            "repository root (it runs `npm ci --prefix tests/oidc`)."
        )


def provider_config(
    host: str,
    port: int,
    issuer: str,
    audience: str,
    scopes: list[str],
    clients: list[OidcClient],
    public_clients: Sequence[OidcPublicClient] = (),
    accounts: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the JSON config `provider.mjs` reads."""
    return {
        "public_clients": [
            {
                "client_id": client.client_id,
                "redirect_uris": list(client.redirect_uris),
                "scopes": None if client.scopes is None else list(client.scopes),
            }
            for client in public_clients
        ],
        "accounts": {name: dict(claims) for name, claims in (accounts or {}).items()},
        "host": host,
        "port": port,
        "issuer": issuer,
        "audience": audience,
        "scopes": scopes,
        "access_token_ttl": DEFAULT_ACCESS_TOKEN_TTL,
        "clients": [
            {
                "client_id": client.client_id,
                "client_secret": client.client_secret,
                "token_endpoint_auth_method": client.auth_method,
                "access_token_ttl": client.access_token_ttl,
                "alg": client.alg,
                "scopes": None if client.scopes is None else list(client.scopes),
            }
            for client in clients
        ],
    }


def _discovery(discovery_url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(discovery_url, timeout=2) as response:  # noqa: S310
            document = json.loads(response.read()) if response.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def wait_until_discoverable(
    process: subprocess.Popen[bytes],
    discovery_url: str,
    issuer: str,
    log_file: Path,
    timeout: float,
) -> dict[str, Any]:
    """Poll the discovery document until it answers; return it if it names `issuer`.

    Raises `OidcError` (with the log tail) when the provider exits, does not answer within
    `timeout` s, or names another issuer.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise OidcError(
                f"oidc-provider exited with status {process.returncode} before answering "
                f"{discovery_url}; log {log_file}:\n{log_tail(log_file)}"
            )
        document = _discovery(discovery_url)
        if document is not None:
            if document.get("issuer") != issuer:
                raise OidcError(
                    f"discovery at {discovery_url} names issuer {document.get('issuer')!r}, "
                    f"expected {issuer!r}"
                )
            return document
        time.sleep(0.1)
    raise OidcError(
        f"oidc-provider did not answer {discovery_url} within {timeout:.0f} s; "
        f"log {log_file}:\n{log_tail(log_file)}"
    )


@contextmanager
def run_oidc_provider(
    workdir: Path,
    *,
    clients: list[OidcClient],
    audience: str,
    scopes: list[str],
    public_clients: Sequence[OidcPublicClient] = (),
    accounts: Mapping[str, Mapping[str, Any]] | None = None,
    timeout: float = START_TIMEOUT,
) -> Iterator[OidcProvider]:
    """Start oidc-provider in `workdir`, yield it once discoverable, then stop it.

    `public_clients` sign people in (the provider's own login page: any login name is an
    account, the password is not checked); `accounts` adds claims to a login name's ID
    token (e.g. `{"alice": {"groups": ["lrs-admins"]}}`, released by the `groups` scope).
    `workdir` receives the config (`oidc-config.json`, holding the client secrets) and the
    log (`oidc.log`). Node is `$LRS_GATEWAY_NODE`, else `node` on PATH.
    """
    node = node_executable()
    check_installed()
    if len({client.client_id for client in clients}) != len(clients):
        raise ValueError("client ids must be unique")
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "oidc-config.json"
    log_file = workdir / "oidc.log"

    host = "127.0.0.1"
    port = free_port(host)
    issuer = f"http://{host}:{port}"
    config = provider_config(
        host, port, issuer, audience, scopes, clients, public_clients, accounts
    )
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    config_file.chmod(0o600)
    discovery_url = f"{issuer}/.well-known/openid-configuration"
    log: IO[bytes]
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [str(node), str(PROVIDER_SCRIPT), str(config_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    try:
        document = wait_until_discoverable(process, discovery_url, issuer, log_file, timeout)
        yield OidcProvider(
            issuer=issuer,
            discovery_url=discovery_url,
            jwks_uri=str(document["jwks_uri"]),
            token_endpoint=str(document["token_endpoint"]),
            audience=audience,
            scopes=tuple(scopes),
            clients=MappingProxyType({client.client_id: client for client in clients}),
            log_file=log_file,
        )
    finally:
        stop_process(process)


def main(argv: list[str]) -> int:
    """Run a provider with one all-scoped client until interrupted (for poking by hand).

    From tests/: `../.venv/bin/python -m realparts.oidc [WORKDIR]`.
    """
    workdir = Path(argv[1]) if len(argv) > 1 else Path.cwd() / "oidc-work"
    client = OidcClient("cli", "cli-secret")
    with run_oidc_provider(
        workdir, clients=[client], audience="http://127.0.0.1/lrs-gateway", scopes=["lrs:all"]
    ) as provider:
        sys.stdout.write(
            f"issuer {provider.issuer} client {client.client_id}:{client.client_secret}\n"
            f"curl -u cli:cli-secret -d grant_type=client_credentials -d scope=lrs:all "
            f"{provider.token_endpoint}\n"
        )
        sys.stdout.flush()
        wait_for_interrupt()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
