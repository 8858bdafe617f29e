"""Smoke test of the `oidc_provider` fixture, talking to oidc-provider directly (no gateway)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import jwt
import pytest
from realparts.oidc import OidcProvider, OidcTokenError

pytestmark = pytest.mark.oidc


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def _verify(
    provider: OidcProvider, token: str, algorithms: list[str] | None = None
) -> dict[str, Any]:
    """Verify `token` with the provider's JWKS (by `kid`) the way a resource server would."""
    header = jwt.get_unverified_header(token)
    async with aiohttp.ClientSession() as session:
        jwks = await _get_json(session, provider.jwks_uri)
    [jwk] = [key for key in jwks["keys"] if key["kid"] == header["kid"]]
    key = jwt.PyJWK(jwk, algorithm=header["alg"])
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=algorithms or ["RS256"],
        audience=provider.audience,
        issuer=provider.issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    return claims


async def test_discovery_names_the_exact_issuer(oidc_provider: OidcProvider) -> None:
    async with aiohttp.ClientSession() as session:
        document = await _get_json(session, oidc_provider.discovery_url)
    assert document["issuer"] == oidc_provider.issuer
    assert not oidc_provider.issuer.endswith("/")
    assert document["jwks_uri"] == oidc_provider.jwks_uri
    assert document["token_endpoint"] == oidc_provider.token_endpoint
    assert "client_credentials" in document["grant_types_supported"]
    assert set(oidc_provider.scopes) <= set(document["scopes_supported"])


async def test_client_credentials_token_is_an_rs256_jwt(oidc_provider: OidcProvider) -> None:
    scope = "lrs:statements/write lrs:statements/read/mine"
    async with aiohttp.ClientSession() as session:
        answer = await oidc_provider.token_response("lms-a", scope, session)
        token = answer["access_token"]
        jwks = await _get_json(session, oidc_provider.jwks_uri)
    assert answer["token_type"] == "Bearer"
    assert answer["scope"] == scope
    assert answer["expires_in"] == 300

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["typ"] == "at+jwt"
    assert header["kid"] in {key["kid"] for key in jwks["keys"]}

    claims = await _verify(oidc_provider, token)
    assert claims["iss"] == oidc_provider.issuer
    assert claims["aud"] == oidc_provider.audience  # a string, not a list
    assert claims["sub"] == "lms-a"
    assert claims["client_id"] == "lms-a"
    assert claims["scope"] == scope  # space separated, as requested
    assert claims["exp"] - claims["iat"] == 300
    assert set(claims) == {"iss", "aud", "sub", "client_id", "scope", "iat", "exp", "jti"}


async def test_token_with_a_wrong_audience_does_not_verify(oidc_provider: OidcProvider) -> None:
    token = await oidc_provider.token("analyst", "lrs:all/read")
    header = jwt.get_unverified_header(token)
    async with aiohttp.ClientSession() as session:
        jwks = await _get_json(session, oidc_provider.jwks_uri)
    [jwk] = [key for key in jwks["keys"] if key["kid"] == header["kid"]]
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, jwt.PyJWK(jwk, algorithm="RS256"), algorithms=["RS256"], audience="other")


async def test_two_clients_have_two_subjects(oidc_provider: OidcProvider) -> None:
    async with aiohttp.ClientSession() as session:
        token_a = await oidc_provider.token("lms-a", "lrs:statements/read/mine", session)
        token_b = await oidc_provider.token("lms-b", "lrs:statements/read/mine", session)
    claims_a = await _verify(oidc_provider, token_a)
    claims_b = await _verify(oidc_provider, token_b)
    assert claims_a["sub"] == "lms-a"
    assert claims_b["sub"] == "lms-b"


async def test_unknown_scope_is_dropped_not_refused(oidc_provider: OidcProvider) -> None:
    answer = await oidc_provider.token_response("analyst", "lrs:statements/read lrs:bogus")
    assert answer["scope"] == "lrs:statements/read"
    claims = await _verify(oidc_provider, answer["access_token"])
    assert claims["scope"] == "lrs:statements/read"


async def test_no_scope_gives_a_token_without_scope_claim(oidc_provider: OidcProvider) -> None:
    answer = await oidc_provider.token_response("analyst", "lrs:bogus")
    assert "scope" not in answer
    claims = await _verify(oidc_provider, answer["access_token"])
    assert "scope" not in claims
    assert claims["sub"] == "analyst"


async def test_short_lived_token_lives_one_second(oidc_provider: OidcProvider) -> None:
    answer = await oidc_provider.token_response("short-lived", "lrs:all")
    assert answer["expires_in"] == 1
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1


async def test_es256_client(oidc_provider: OidcProvider) -> None:
    token = await oidc_provider.token("es256", "lrs:all")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    claims = await _verify(oidc_provider, token, algorithms=["ES256"])
    assert claims["sub"] == "es256"


async def test_refusals(oidc_provider: OidcProvider) -> None:
    with pytest.raises(OidcTokenError) as excinfo:
        await oidc_provider.token_response("lms-a", "lrs:all", resource="http://other.example/")
    assert excinfo.value.status == 400
    assert json.loads(excinfo.value.body)["error"] == "invalid_target"

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            oidc_provider.token_endpoint,
            data={"grant_type": "client_credentials", "client_id": "lms-a", "client_secret": "no"},
        ) as resp,
    ):
        assert resp.status == 401
        assert (await resp.json())["error"] == "invalid_client"
