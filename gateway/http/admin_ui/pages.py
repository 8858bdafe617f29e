"""The web admin's pages: log in, credentials, log out.

Credentials: list, search, create, enable, disable, rotate, delete. Server-rendered
with autoescaping templates and usable without JavaScript (only the copy button uses
it). Every state change is a POST carrying the session's CSRF token; a missing or wrong
one is a 403 page. The login form counts failed logins toward the lockout like
any other Basic login, and only a credential holding `admin` gets in.
"""

from __future__ import annotations

import base64
import secrets
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, FileSystemLoader, select_autoescape
from yarl import URL

from gateway.auth.oidc import oidc_agent
from gateway.auth.oidc_login import AuthorizationCodeLogin, PendingLogin
from gateway.auth.principal import Principal
from gateway.config.settings import AdminUiConfig
from gateway.errors import GatewayError
from gateway.forwarding.store import BackfillState
from gateway.http.admin_scope import Admin, admin_of
from gateway.http.admin_ui.activity import polyline
from gateway.http.admin_ui.sessions import (
    COOKIE,
    PENDING_COOKIE,
    PENDING_LIFETIME,
    AdminSession,
    SessionKeeper,
)
from gateway.http.handlers.admin_credentials import changed, create_checked, rotated_secret
from gateway.http.handlers.operations import forwarding_document, replay_dead_letters
from gateway.http.keys import (
    ACTIVITY,
    ADMIN_UI,
    CONFIG,
    CREDENTIAL_SOURCES,
    OIDC_LOGIN,
    PRINCIPAL,
    STORAGE,
    VERSIONS,
)
from gateway.http.middlewares import authenticate_request
from gateway.http.readiness import check_readiness
from gateway.http.tenancy import tenant_label
from gateway.store.credentials import OfTenant, check_changes
from gateway.xapi.scopes import KNOWN_SCOPES, normalize_scopes

__all__ = [
    "AdminUi",
    "act",
    "create",
    "credentials_page",
    "forwarding_page",
    "index",
    "login",
    "login_form",
    "logout",
    "overview_page",
    "replay",
    "sso_callback",
    "sso_start",
]

LOGIN_COOKIE = "lrs_gateway_login"  # the login form's own CSRF token, before any session
_ADMIN_ONLY = normalize_scopes(["admin"], "")[0]
_TEMPLATES = Path(__file__).parent / "templates"


def _when(moment: float | None) -> str:
    if moment is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(moment))


class AdminUi:
    """The templates, the session keeper and the cookie settings of the web admin."""

    def __init__(self, config: AdminUiConfig, keeper: SessionKeeper) -> None:
        self.config = config
        self.keeper = keeper
        self._env = Environment(
            loader=FileSystemLoader(_TEMPLATES),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self._env.filters["when"] = _when

    def render(
        self,
        name: str,
        *,
        status: int = 200,
        session: AdminSession | None = None,
        **context: Any,
    ) -> web.Response:
        """A page, with headers that keep it out of frames, caches and other origins."""
        nonce = secrets.token_urlsafe(16)
        body = self._env.get_template(name).render(session=session, nonce=nonce, **context)
        response = web.Response(text=body, status=status, content_type="text/html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
            f"script-src 'nonce-{nonce}'; form-action 'self'; frame-ancestors 'none'; "
            "base-uri 'none'"
        )
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def set_cookie(self, response: web.StreamResponse, name: str, value: str) -> None:
        """HttpOnly, SameSite=Strict, Secure unless configured for local http."""
        response.set_cookie(
            name,
            value,
            path="/admin",
            httponly=True,
            samesite="Strict",
            secure=self.config.secure_cookie,
        )


def _ui(request: web.Request) -> AdminUi:
    return request.app[ADMIN_UI]


def _admin_now(request: web.Request, session: AdminSession) -> Principal | None:
    """The session's person as they are now: None once they no longer hold `admin`."""
    if session.scheme == "oidc":
        return _signed_in_admin(request, session)
    if session.scheme != "basic":
        return None
    credential = request.app[CREDENTIAL_SOURCES].get(session.subject)
    if credential is None or "admin" not in credential.scopes:
        return None
    return Principal(
        session.subject, credential.agent, credential.scopes, "basic", credential.tenant
    )


def _signed_in_admin(request: web.Request, session: AdminSession) -> Principal | None:
    """A single sign-on admin, checked at the provider when they signed in.

    The session then lasts its idle and absolute limits; None once single sign-on is off.
    """
    if OIDC_LOGIN not in request.app:
        return None
    issuer = (request.app[CONFIG].auth.oidc.issuer or "").rstrip("/")
    subject = session.subject.removeprefix(issuer + "/")
    agent = oidc_agent("account", {"iss": issuer, "sub": subject})
    return Principal(session.subject, agent, _ADMIN_ONLY, "oidc", session.tenant)


def _session(request: web.Request) -> tuple[AdminSession, Principal] | None:
    session = _ui(request).keeper.read(request.cookies.get(COOKIE))
    if session is None:
        return None
    principal = _admin_now(request, session)
    return None if principal is None else (session, principal)


def _redirect(location: str) -> web.Response:
    """303 See Other: after a form, the browser GETs the next page."""
    return web.Response(status=303, headers={"Location": location})


def _to_login() -> web.Response:
    response = _redirect("/admin/login")
    response.del_cookie(COOKIE, path="/admin")
    return response


def _renewed(request: web.Request, response: web.Response, session: AdminSession) -> web.Response:
    _ui(request).set_cookie(response, COOKIE, _ui(request).keeper.seal(session))
    return response


async def index(request: web.Request) -> web.Response:
    """GET /admin/: the overview, or the login form."""
    if _session(request) is None:
        return _to_login()
    return _redirect("/admin/ui/overview")


async def login_form(
    request: web.Request, error: str | None = None, status: int = 200
) -> web.Response:
    """GET /admin/login."""
    token = secrets.token_urlsafe(24)
    response = _ui(request).render(
        "login.html",
        title="Log in",
        login_token=token,
        error=error,
        status=status,
        sso=OIDC_LOGIN in request.app,
    )
    _ui(request).set_cookie(response, LOGIN_COOKIE, token)
    return response


async def login(request: web.Request) -> web.Response:
    """POST /admin/login: a credential holding `admin` gets a session."""
    form = await request.post()
    given = form.get("csrf")
    expected = request.cookies.get(LOGIN_COOKIE)
    if not isinstance(given, str) or not expected or not secrets.compare_digest(given, expected):
        return _forbidden(request, "The login form has expired: load it again.", "/admin/login")
    username, password = form.get("username"), form.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        return await login_form(request, "Username and password, please.", 400)
    authorization = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    try:
        principal = await authenticate_request(request, authorization)
    except GatewayError as refused:
        return await login_form(request, refused.message, refused.status)
    if "admin" not in principal.scopes:
        return _forbidden(request, "This credential does not hold the admin scope.", "/admin/login")
    session = _ui(request).keeper.new(principal.id, principal.scheme)
    response = _renewed(request, _redirect("/admin/ui/overview"), session)
    response.del_cookie(LOGIN_COOKIE, path="/admin")
    return response


def _forbidden(
    request: web.Request,
    message: str,
    back: str,
    session: AdminSession | None = None,
    status: int = 403,
) -> web.Response:
    return _ui(request).render(
        "message.html",
        title="Not allowed" if status == 403 else "Not signed in",
        message=message,
        back=back,
        status=status,
        session=session,
    )


def _redirect_uri(request: web.Request, login: AuthorizationCodeLogin) -> str:
    if login.redirect_uri is not None:
        return login.redirect_uri
    # The origin the browser used; the provider accepts only the registered URIs, so a
    # forged Host header can only send the code somewhere the provider refuses.
    return str(request.url.origin().join(URL("/admin/callback")))


async def sso_start(request: web.Request) -> web.Response:
    """GET /admin/login/oidc: off to the provider with a fresh state, nonce and PKCE."""
    login = request.app.get(OIDC_LOGIN)
    if login is None:
        raise web.HTTPNotFound()
    pending = PendingLogin.new(_redirect_uri(request, login))
    try:
        location = login.authorization_url(pending)
    except GatewayError as refused:
        return await login_form(request, refused.message, refused.status)
    response = web.Response(status=302, headers={"Location": location})
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(
        PENDING_COOKIE,
        _ui(request).keeper.seal_pending(pending),
        path="/admin",
        httponly=True,
        samesite="Lax",  # it must come back with the provider's cross-site redirect
        secure=_ui(request).config.secure_cookie,
        max_age=PENDING_LIFETIME,
    )
    return response


async def sso_callback(request: web.Request) -> web.Response:
    """GET /admin/callback: the provider sends the person back with a code (or an error)."""
    login = request.app.get(OIDC_LOGIN)
    if login is None:
        raise web.HTTPNotFound()
    pending = _ui(request).keeper.open_pending(request.cookies.get(PENDING_COOKIE))
    if pending is None or not pending.state_matches(request.query.get("state")):
        return _forbidden(
            request,
            "This sign-in has expired or was not started here: start again.",
            "/admin/login",
            status=400,
        )
    error = request.query.get("error")
    code = request.query.get("code")
    if error is not None or not code:
        return _forbidden(
            request,
            f"The identity provider did not sign you in ({error or 'no code'}).",
            "/admin/login",
        )
    try:
        person = await login.finish(pending, code)
    except GatewayError as refused:
        return _forbidden(request, refused.message, "/admin/login", status=refused.status)
    if not person.admin:
        response = _forbidden(
            request,
            f"You are signed in as {person.display_name} ({person.id}), who is not an "
            "administrator of this gateway.",
            "/admin/login",
        )
    elif person.tenant is not None and person.tenant not in {
        t.name for t in request.app[CONFIG].tenants
    }:
        response = _forbidden(
            request,
            f"You are signed in as {person.display_name} ({person.id}), of a tenant this "
            "gateway does not have.",
            "/admin/login",
        )
    else:
        session = _ui(request).keeper.new(person.id, "oidc", person.tenant)
        # A page, not a redirect: after the provider's cross-site redirect the browser would
        # not send a SameSite=Strict cookie with the next hop; from our own page it does.
        response = _renewed(
            request,
            _ui(request).render(
                "continue.html",
                title="Signed in",
                who=person.display_name,
                next="/admin/ui/overview",
            ),
            session,
        )
    response.del_cookie(PENDING_COOKIE, path="/admin")
    return response


async def _checked_post(
    request: web.Request,
) -> tuple[AdminSession, Principal, Any] | web.Response:
    """The session, the person and the form of a state change; else the page to answer."""
    found = _session(request)
    if found is None:
        return _to_login()
    session, principal = found
    form = await request.post()
    given = form.get("csrf")
    if not session.csrf_matches(given if isinstance(given, str) else None):
        return _forbidden(
            request,
            "This form has no valid CSRF token: reload the page.",
            "/admin/ui/credentials",
            session,
        )
    request[PRINCIPAL] = principal
    return session, principal, form


async def logout(request: web.Request) -> web.Response:
    """POST /admin/logout."""
    checked = await _checked_post(request)
    if isinstance(checked, web.Response):
        return checked
    return _to_login()


async def credentials_page(
    request: web.Request,
    *,
    shown_secret: dict[str, str] | None = None,
    error: str | None = None,
    status: int = 200,
    found: tuple[AdminSession, Principal] | None = None,
) -> web.Response:
    """GET /admin/ui/credentials?search=: the list, the create form, a new secret once."""
    found = found or _session(request)
    if found is None:
        return _to_login()
    session, principal = found
    admin = admin_of(principal, "the credentials page")
    database = request.app[CREDENTIAL_SOURCES].database
    assert database is not None
    search = request.query.get("search") or None
    try:
        listing = admin.listing(request)
    except GatewayError as refused:
        listing, error, status = admin.within(None, request), refused.message, refused.status
    credentials, total = await database.page(offset=0, limit=500, search=search, tenant=listing)
    response = _ui(request).render(
        "credentials.html",
        title="Credentials",
        session=session,
        credentials=credentials,
        total=total,
        search=search,
        shown_secret=shown_secret,
        error=error,
        status=status,
        known_scopes=" ".join(sorted(KNOWN_SCOPES)),
        **_tenancy(request, admin, listing),
    )
    return _renewed(request, response, session)


def _tenancy(request: web.Request, admin: Admin, listing: OfTenant | None) -> dict[str, Any]:
    """What the credentials page shows of tenants (nothing when none is configured)."""
    names = [t.name for t in request.app[CONFIG].tenants]
    return {
        "tenants": [tenant_label(None), *names] if names else [],
        "bound_tenant": admin.tenant,
        "listed_tenant": None if listing is None else tenant_label(listing.name),
        "tenant_label": tenant_label,
    }


async def create(request: web.Request) -> web.Response:
    """POST /admin/ui/credentials: create; the page then shows the secret once."""
    checked = await _checked_post(request)
    if isinstance(checked, web.Response):
        return checked
    session, principal, form = checked
    fields: dict[str, Any] = {
        "name": str(form.get("name", "")),
        "scopes": str(form.get("scopes", "")).split(),
    }
    if str(form.get("username", "")).strip():
        fields["username"] = str(form["username"]).strip()
    tenant = str(form.get("tenant", "")).strip()
    if tenant and tenant != tenant_label(None):
        fields["tenant"] = tenant
    try:
        stored, secret = await create_checked(request, check_changes(fields, sorted(fields)))
    except GatewayError as refused:
        return await credentials_page(
            request, error=refused.message, status=refused.status, found=(session, principal)
        )
    assert secret is not None
    return await credentials_page(
        request,
        shown_secret={"username": stored.username, "secret": secret},
        found=(session, principal),
    )


async def act(request: web.Request) -> web.Response:
    """POST /admin/ui/credentials/{id}/{enable|disable|rotate|delete}."""
    checked = await _checked_post(request)
    if isinstance(checked, web.Response):
        return checked
    session, principal, form = checked
    database = request.app[CREDENTIAL_SOURCES].database
    assert database is not None
    credential_id, action = request.match_info["id"], request.match_info["action"]
    admin = admin_of(principal, "changing credentials")
    actor = admin.actor
    found = await database.get(credential_id)
    if found is None or not admin.reaches(found.tenant):
        return await credentials_page(
            request, error="That credential is gone.", status=404, found=(session, principal)
        )
    shown: dict[str, str] | None = None
    if action in ("enable", "disable"):
        await database.update(credential_id, {"enabled": action == "enable"}, actor=actor)
    elif action == "rotate":
        try:
            _, secret = await rotated_secret(request, database, found, actor)
        except GatewayError as refused:
            return await credentials_page(
                request, error=refused.message, status=refused.status, found=(session, principal)
            )
        shown = {"username": found.username, "secret": secret}
    elif action == "delete":
        if form.get("confirm") != "yes":
            return await credentials_page(
                request, error="Tick 'sure' to delete.", status=400, found=(session, principal)
            )
        await database.delete(credential_id, actor=actor)
    else:
        raise web.HTTPNotFound()
    await changed(request)
    if shown is not None:
        return await credentials_page(request, shown_secret=shown, found=(session, principal))
    return _renewed(request, _redirect("/admin/ui/credentials"), session)


async def overview_page(request: web.Request) -> web.Response:
    """GET /admin/ui/overview: readiness, storage and its versions, the credential counts."""
    found = _session(request)
    if found is None:
        return _to_login()
    session, _ = found
    report = await check_readiness(request.app)
    sources = request.app[CREDENTIAL_SOURCES]
    response = _ui(request).render(
        "overview.html",
        activity=_activity_view(request),
        title="Overview",
        session=session,
        ready=report.ready,
        checks=report.checks,
        storage_url=str(request.app[STORAGE].base.with_user(None)),  # no userinfo shown
        versions=request.app[VERSIONS].versions,
        file_users=len(sources.file),
        database_users=len(sources) - len(sources.file),
    )
    return _renewed(request, response, session)


_CHART_WIDTH, _CHART_HEIGHT = 600.0, 140.0


def _activity_view(request: web.Request) -> dict[str, Any] | None:
    """The latest rates and the chart's lines (None before two samples)."""
    activity = request.app.get(ACTIVITY)
    rates = activity.rates() if activity is not None else []
    if activity is None or not rates:
        return None
    requests = [r.per_second.get("requests", 0.0) for r in rates]
    errors = [
        r.per_second.get("client_errors", 0.0) + r.per_second.get("server_errors", 0.0)
        for r in rates
    ]
    refused = [r.per_second.get("auth_refused", 0.0) for r in rates]
    top = max([*requests, *errors, *refused, 1.0])
    size = {"width": _CHART_WIDTH, "height": _CHART_HEIGHT, "top": top}
    return {
        "now": rates[-1].per_second,
        "minutes": round(len(rates) * activity.interval / 60, 1),
        "top": top,
        "width": _CHART_WIDTH,
        "height": _CHART_HEIGHT,
        "requests": polyline(requests, **size),
        "errors": polyline(errors, **size),
        "refused": polyline(refused, **size),
    }


def _backfill_view(figures: dict[str, Any], now: float) -> dict[str, Any] | None:
    """A target's backfill as the page shows it (None: it has none).

    The status document holds it as a dict (a BackfillState's fields, perhaps from another
    worker's JSON): made a BackfillState again for its `fraction`.
    """
    backfill = BackfillState.from_document(figures.get("backfill"))
    if backfill is None:
        return None
    state = backfill.status(now)
    return {
        "state": state,
        "percent": backfill.fraction * 100,  # shown rounded down
        "queued": backfill.queued,
        "skipped": backfill.skipped,
        "cursor": backfill.cursor,
        "since": backfill.since or backfill.first,
        "until": backfill.until,
        "updated_at": backfill.updated_at,
    }


async def forwarding_page(
    request: web.Request,
    *,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
    found: tuple[AdminSession, Principal] | None = None,
) -> web.Response:
    """GET /admin/ui/forwarding: every target's state, backlog, lag, deliveries, dead letters.

    And each target's backfill, if it has one: running, interrupted or done, and how far.
    """
    found = found or _session(request)
    if found is None:
        return _to_login()
    session, principal = found
    mine = admin_of(principal, "the forwarding page").targets(request.app[CONFIG])
    document = await forwarding_document(request.app)
    targets = {name: t for name, t in document["targets"].items() if name in mine}
    now = time.time()
    backfills = {
        name: view
        for name, figures in targets.items()
        if (view := _backfill_view(figures, now)) is not None
    }
    response = _ui(request).render(
        "forwarding.html",
        title="Forwarding",
        session=session,
        targets=targets,
        backfills=backfills,
        configured=mine,
        notice=notice,
        error=error,
        status=status,
    )
    return _renewed(request, response, session)


async def replay(request: web.Request) -> web.Response:
    """POST /admin/ui/forwarding/{target}/replay: the "send again" button."""
    checked = await _checked_post(request)
    if isinstance(checked, web.Response):
        return checked
    session, principal, _ = checked
    target = request.match_info["target"]
    try:
        moved = await replay_dead_letters(
            request.app, target, admin_of(principal, "replaying dead letters")
        )
    except GatewayError as refused:
        return await forwarding_page(
            request, error=refused.message, status=refused.status, found=(session, principal)
        )
    return await forwarding_page(
        request,
        notice=f"{moved} dead letters of {target} are back in its queue.",
        found=(session, principal),
    )
