"""`lrs-gateway lockout clear`: ask the running gateway to lift a lockout now.

Lockouts live in the gateway's memory (each worker's), so the command calls the admin
endpoint `POST /admin/lockout/clear` of the running gateway with an admin credential.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from gateway.config.settings import Config

__all__ = ["add_arguments", "clear", "gateway_url"]

USER_ENV = "LRS_GATEWAY_ADMIN_USER"
PASSWORD_ENV = "LRS_GATEWAY_ADMIN_PASSWORD"  # noqa: S105 (a variable's name)
TOKEN_ENV = "LRS_GATEWAY_ADMIN_TOKEN"  # noqa: S105


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `lockout clear`."""
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--username", help="the username whose lockout is lifted")
    who.add_argument("--address", help="the client address whose lockout is lifted")
    parser.add_argument(
        "--url", help="the running gateway's base URL (default: from server.host and server.port)"
    )
    parser.add_argument(
        "--admin-user",
        default=None,
        help=f"a user with the admin scope (default: ${USER_ENV}); the "
        f"password from ${PASSWORD_ENV}, else prompted; or a bearer token "
        f"with the admin scope in ${TOKEN_ENV}",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")


def gateway_url(config: Config) -> str:
    """Where the gateway listens, as this machine reaches it."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(  # noqa: S104
        config.server.host, config.server.host
    )
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}/"


def _authorization(args: argparse.Namespace) -> str | None:
    token = os.environ.get(TOKEN_ENV)
    if token and args.admin_user is None:
        return f"Bearer {token}"
    user = args.admin_user or os.environ.get(USER_ENV)
    if not user:
        return None
    password = os.environ.get(PASSWORD_ENV)
    if password is None:
        password = getpass.getpass(f"Password of {user}: ")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _said(body: bytes) -> str:
    try:
        answer: Any = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    return str(answer.get("message", answer)) if isinstance(answer, dict) else str(answer)


def clear(args: argparse.Namespace, config: Config | None) -> int:
    """Lift the lockout; 0 when the gateway did (or there was none), 1 otherwise."""
    base = args.url or (gateway_url(config) if config is not None else None)
    if base is None:
        print("error: no gateway to ask: give --url or a configuration", file=sys.stderr)
        return 1
    authorization = _authorization(args)
    if authorization is None:
        print(
            f"error: an admin credential is needed: --admin-user (or ${USER_ENV}) with "
            f"${PASSWORD_ENV}, or ${TOKEN_ENV}",
            file=sys.stderr,
        )
        return 2
    subject = (
        {"username": args.username} if args.username is not None else {"address": args.address}
    )
    url = base.rstrip("/") + "/admin/lockout/clear"
    request = urllib.request.Request(  # noqa: S310 (http(s) URL of the operator's choice)
        url,
        data=json.dumps(subject).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Authorization": authorization},
    )
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        hint = {
            401: " (the admin credential was refused)",
            403: " (the credential lacks the admin scope)",
            404: " (no such endpoint: is this lrs-gateway, and recent enough?)",
            429: " (this address or admin user is locked out itself: ask from another"
            " address, e.g. on the gateway's host)",
        }.get(exc.code, "")
        print(f"error: {url} answered {exc.code}{hint}: {_said(exc.read())}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"error: cannot reach the gateway at {base} ({reason}); is it running? (--url)",
            file=sys.stderr,
        )
        return 1
    ((kind, value),) = subject.items()
    workers = f" on all {answer['workers']} workers" if "workers" in answer else ""
    if answer.get("was_locked_out"):
        print(f"lifted the lockout of {kind} {value}{workers}")
    else:
        print(f"{kind} {value} was not locked out{workers}; its failed logins are forgotten")
    return 0
