"""The route table: every path, the handler that serves it, and its name."""

from __future__ import annotations

from aiohttp import web

from gateway.http.admin_ui import pages
from gateway.http.handlers import (
    admin_compat,
    admin_credentials,
    operations,
    passthrough,
    statements,
    tokens,
)
from gateway.http.keys import GUARD, WORKER

__all__ = ["setup_routes"]


def setup_routes(
    app: web.Application,
    *,
    metrics_path: str | None,
    credentials_api: bool = False,
    admin_ui: bool = False,
) -> None:
    """Register every route; the catch-all for other /xAPI/ paths goes last."""
    router = app.router
    router.add_get("/xAPI/about{slash:/?}", operations.about, name="xapi.about")
    statements_resource = router.add_resource("/xAPI/statements{slash:/?}", name="xapi.statements")
    # One handler for every method: a request in the alternate syntax changes its method
    # after routing.
    statements_resource.add_route("*", statements.statements)
    for path, name in (
        ("/xAPI/activities/state{slash:/?}", "xapi.state"),
        ("/xAPI/activities/profile{slash:/?}", "xapi.activity_profile"),
        ("/xAPI/agents/profile{slash:/?}", "xapi.agent_profile"),
        ("/xAPI/activities{slash:/?}", "xapi.activities"),
        ("/xAPI/agents{slash:/?}", "xapi.agents"),
        ("/xAPI/{tail:.+}", "xapi.other"),
    ):
        router.add_route("*", path, passthrough.proxy, name=name)
    router.add_get("/whoami", operations.whoami, name="whoami")
    router.add_post("/token", tokens.issue_token, name="token")
    router.add_get("/admin/forwarding", operations.forwarding_status, name="admin.forwarding")
    router.add_post("/admin/lockout/clear", operations.lockout_clear, name="admin.lockout_clear")
    router.add_post(
        "/admin/forwarding/{target}/replay",
        operations.forwarding_replay,
        name="admin.forwarding_replay",
    )
    if credentials_api:
        credentials = router.add_resource("/admin/credentials", name="admin.credentials")
        credentials.add_route("GET", admin_credentials.list_credentials)
        credentials.add_route("POST", admin_credentials.create_credential)
        credential = router.add_resource("/admin/credentials/{id}", name="admin.credential")
        credential.add_route("GET", admin_credentials.get_credential)
        credential.add_route("PATCH", admin_credentials.update_credential)
        credential.add_route("DELETE", admin_credentials.delete_credential)
        router.add_post(
            "/admin/credentials/{id}/rotate",
            admin_credentials.rotate_credential,
            name="admin.credential_rotate",
        )
        router.add_get("/admin/audit", admin_credentials.audit, name="admin.audit")
        # The shapes of Rustici Engine's and SQL LRS's credential APIs, on the same store.
        rustici = router.add_resource("/admin/xapi/credentials", name="admin.rustici")
        rustici.add_route("GET", admin_compat.rustici_list)
        rustici.add_route("PUT", admin_compat.rustici_put)
        one = router.add_resource("/admin/xapi/credentials/{id}", name="admin.rustici_one")
        one.add_route("GET", admin_compat.rustici_get)
        one.add_route("DELETE", admin_compat.rustici_delete)
        creds = router.add_resource("/admin/creds", name="admin.sqllrs")
        creds.add_route("GET", admin_compat.sqllrs_list)
        creds.add_route("POST", admin_compat.sqllrs_create)
        creds.add_route("PUT", admin_compat.sqllrs_update)
        creds.add_route("DELETE", admin_compat.sqllrs_delete)
    if credentials_api and admin_ui:
        router.add_get("/admin/", pages.index, name="admin_ui.index")
        login = router.add_resource("/admin/login", name="admin_ui.login")
        login.add_route("GET", pages.login_form)
        login.add_route("POST", pages.login)
        router.add_post("/admin/logout", pages.logout, name="admin_ui.logout")
        router.add_get("/admin/login/oidc", pages.sso_start, name="admin_ui.sso")
        router.add_get("/admin/callback", pages.sso_callback, name="admin_ui.callback")
        router.add_get("/admin/ui/overview", pages.overview_page, name="admin_ui.overview")
        router.add_get("/admin/ui/forwarding", pages.forwarding_page, name="admin_ui.forwarding")
        router.add_post(
            "/admin/ui/forwarding/{target}/replay", pages.replay, name="admin_ui.replay"
        )
        page = router.add_resource("/admin/ui/credentials", name="admin_ui.credentials")
        page.add_route("GET", pages.credentials_page)
        page.add_route("POST", pages.create)
        router.add_post(
            "/admin/ui/credentials/{id}/{action:enable|disable|rotate|delete}",
            pages.act,
            name="admin_ui.act",
        )
    role = app.get(WORKER)
    if role is not None:  # each worker keeps its own lockouts: siblings lift theirs too
        role.commands.register("lockout-clear", operations.lift_own_lockout(app[GUARD]))
        role.commands.register("forwarding-replay", operations.replay_own_dead_letters(app))
    router.add_get("/__lbheartbeat__", operations.lbheartbeat, name="lbheartbeat")
    router.add_get("/__heartbeat__", operations.heartbeat, name="heartbeat")
    if metrics_path is not None:
        router.add_get(metrics_path, operations.metrics, name="metrics")
