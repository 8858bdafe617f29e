"""The `lrs-gateway` command: serve, check-config, auth add."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__, authcli
from gateway.auth.credentials import CredentialsError, parse_credentials
from gateway.config import Config, load_config, resolve_config_path
from gateway.errors import ConfigError

__all__ = ["main"]

log = logging.getLogger("gateway")


def _load(args: argparse.Namespace) -> Config:
    return load_config(resolve_config_path(args.config, os.environ), os.environ)


def _check_auth(config: Config) -> list[str]:
    """Problems with what the enabled auth backends read from disk (warnings included)."""
    problems = []
    if "basic" in config.auth.backends:
        problems += _check_credentials(config)
    if "token" in config.auth.backends:
        from gateway.auth.tokens import TokenSigner

        try:
            TokenSigner(config.auth.tokens, Path(config.base_dir))
        except (OSError, ValueError) as exc:
            problems.append(f"auth.tokens.private_key_file: cannot be used ({exc})")
    return problems


def _check_credentials(config: Config) -> list[str]:
    """Problems with the credentials file, as messages (warnings included)."""
    basic = config.auth.basic
    path = config.resolve_path(basic.credentials_file)
    try:
        parsed = parse_credentials(path.read_text(encoding="utf-8"),
                                   account_homepage=basic.account_homepage,
                                   scope_prefix=config.auth.scope_prefix)
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: cannot read the credentials file ({type(exc).__name__})"]
    except CredentialsError as exc:
        return [f"{path}: {exc}"]
    return [f"{path}: warning: {warning}" for warning in parsed.warnings]


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the other commands start three times faster without aiohttp.
    from aiohttp import web

    from gateway.app import create_app

    config = _load(args)
    problems = [p for p in _check_auth(config) if ": warning: " not in p]
    if problems:
        raise ConfigError("\n".join(problems))
    app = create_app(config)
    host, port = config.server.host, config.server.port

    def listening(_: str) -> None:  # run_app calls this once the sockets are bound
        log.info("lrs-gateway %s listening on http://%s:%d/ (storage %s)", __version__,
                 host, port, config.storage.url)

    try:
        web.run_app(app, host=host, port=port, shutdown_timeout=config.server.shutdown_timeout,
                    access_log=None, print=listening, handle_signals=True)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    problems = _check_auth(config)
    for problem in problems:
        print(problem)
    if any(": warning: " not in p for p in problems):
        return 1
    print("ok")
    return 0


def _auth_add(args: argparse.Namespace) -> int:
    if args.file and not args.write:
        print("error: --file goes with -w/--write", file=sys.stderr)
        return 2
    password = args.password
    if password is None:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Password (again): "):
            print("the passwords differ", file=sys.stderr)
            return 2
    try:
        entry = authcli.build_entry(args, password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.write:
        print(json.dumps(entry, indent=2))
        return 0
    if args.file:
        path = Path(args.file)
    else:
        config = _load(args)
        path = config.resolve_path(config.auth.basic.credentials_file)
    try:
        replaced = authcli.write_entry(path, entry)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'replaced' if replaced else 'added'} {args.username} in {path}")
    return 0


def _token_issue(args: argparse.Namespace) -> int:
    """Sign a token for a user of the credentials file, as POST /token would for them."""
    from gateway.auth.tokens import TokenSigner
    from gateway.errors import Forbidden
    from gateway.principal import Principal

    config = _load(args)
    basic = config.auth.basic
    path = config.resolve_path(basic.credentials_file)
    try:
        signer = TokenSigner(config.auth.tokens, Path(config.base_dir))
        users = parse_credentials(path.read_text(encoding="utf-8"),
                                  account_homepage=basic.account_homepage,
                                  scope_prefix=config.auth.scope_prefix).users
    except (OSError, ValueError, AssertionError) as exc:
        print(f"error: {exc or 'auth.tokens needs a secret or private_key_file'}",
              file=sys.stderr)
        return 1
    user = users.get(args.username)
    if user is None:
        print(f"error: no user {args.username!r} in {path}", file=sys.stderr)
        return 1
    principal = Principal(id=user.username, agent=user.agent, scopes=user.scopes,
                          scheme="basic")
    try:
        token, expires = signer.issue(principal, args.scopes, args.expires_in)
    except Forbidden as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps({"token": token, "expires_at": expires}))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrs-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lrs-gateway {__version__}")
    parser.add_argument("--config", help="config file (default: $LRS_GATEWAY_CONFIG or "
                        "./config.yaml)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.set_defaults(run=_serve)
    check = commands.add_parser("check-config", help="validate the configuration")
    check.set_defaults(run=_check_config)
    auth = commands.add_parser("auth", help="manage Basic credentials")
    auth_commands = auth.add_subparsers(dest="auth_command", required=True)
    add = auth_commands.add_parser("add", help="create a credential (Ralph format)")
    authcli.add_arguments(add)
    add.set_defaults(run=_auth_add)
    token = commands.add_parser("token", help="gateway-issued bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = token_commands.add_parser("issue", help="sign a token for a credentials-file user")
    issue.add_argument("-u", "--username", required=True)
    issue.add_argument("-s", "--scope", action="append", default=[], dest="scopes",
                       required=True, help="repeat for several; within the user's scopes")
    issue.add_argument("--expires-in", type=float, default=3600.0,
                       help="seconds (capped by auth.tokens.max_lifetime)")
    issue.set_defaults(run=_token_issue)
    for sub in (serve, check, add, issue):
        sub.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m gateway`."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
