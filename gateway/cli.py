"""The `lrs-gateway` command: serve, check-config, auth add, token issue, forwarding."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway import __version__, authcli
from gateway.auth.credentials import CredentialsError, parse_credentials
from gateway.config import Config, load_config, resolve_config_path
from gateway.errors import ConfigError
from gateway.logs import setup_logging

if TYPE_CHECKING:
    from gateway.forwarding.store import OutboxStore
    from gateway.workers import WorkerRole

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


def _worker_role(args: argparse.Namespace) -> WorkerRole | None:
    from gateway.workers import WorkerRole

    if args.worker is None:
        return None
    index, _, count = args.worker.partition("/")
    if (not (index.isdigit() and count.isdigit() and int(index) < int(count))
            or not args.run_dir or args.supervisor is None):
        raise ConfigError("--worker I/N, --run-dir and --supervisor are set by "
                          "`serve --workers N` only")
    # The pid from the supervisor itself: were it gone before this process asked, its
    # parent would already be someone else.
    return WorkerRole(int(index), int(count), Path(args.run_dir), supervisor=args.supervisor)


def _refuse_stranded_outboxes(config: Config, workers: int) -> None:
    from gateway.workers import stranded_backlogs

    stranded = stranded_backlogs(config.resolve_path(config.data_dir), workers)
    if stranded:
        listed = ", ".join(f"{path} ({count} statements)" for path, count in stranded.items())
        raise ConfigError(
            f"an earlier run with more workers left statements to forward in {listed}: "
            f"serve with --workers {max(int(p.name.split('-')[1]) for p in stranded) + 1} "
            "until `lrs-gateway forwarding status` shows no backlog, then with fewer")


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the other commands start three times faster without aiohttp.
    from gateway.app import create_app
    from gateway.sentry import setup_sentry
    from gateway.serving import run
    from gateway.workers import supervise, worker_command, worker_data_dir

    config = _load(args)
    problems = [p for p in _check_auth(config) if ": warning: " not in p]
    if problems:
        raise ConfigError("\n".join(problems))
    role = _worker_role(args)
    if role is None:
        workers = config.server.workers if args.workers is None else args.workers
        if workers < 1:
            raise ConfigError("--workers: must be at least 1")
        _refuse_stranded_outboxes(config, workers)
        if workers > 1:
            if config.server.port == 0:
                raise ConfigError("server.port: workers share one port; 0 (any) cannot be")
            _tune_runtime()
            return supervise(worker_command(args.argv), workers,
                             stop_timeout=config.server.shutdown_timeout)
    else:
        config = replace(config, data_dir=worker_data_dir(config.data_dir, role.index))
    if setup_sentry(config.sentry):
        log.info("reporting errors to Sentry (environment %s)", config.sentry.environment)
    app = create_app(config, worker=role)
    if not config.server.access_log:
        logging.getLogger("gateway.access").setLevel(logging.WARNING)
    host, port = config.server.host, config.server.port

    def listening() -> None:  # called once the socket is bound
        storage = urlsplit(config.storage.url)
        shown = f"{storage.scheme}://{storage.hostname}:{storage.port or ''}{storage.path}"
        worker = "" if role is None else f" worker {role.index}/{role.count}"
        log.info("lrs-gateway %s%s listening on http://%s:%d/ (storage %s)", __version__,
                 worker, host, port, shown)

    _tune_runtime()
    try:
        run(app, host=host, port=port, shutdown_timeout=config.server.shutdown_timeout,
            header_timeout=config.limits.header_timeout, on_listening=listening,
            reuse_port=role is not None)
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _tune_runtime() -> None:
    """Uvloop when installed, and a garbage collector that runs less often on the hot path.

    Both measured in bench/: uvloop +15% single statements; a larger first generation
    +10-40% on batches (each request allocates many short-lived dicts).
    """
    import asyncio
    import gc

    try:
        import uvloop
    except ImportError:
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    gc.set_threshold(20_000, 20, 20)


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


def _open_outboxes(config: Config) -> list[OutboxStore]:
    """The outbox of a single process, or of every worker (`serve --workers`)."""
    from gateway.forwarding.forwarder import OUTBOX_FILE
    from gateway.forwarding.store import OutboxStore
    from gateway.workers import outbox_dirs

    data_dir = config.resolve_path(config.data_dir)
    paths = [d / OUTBOX_FILE for d in outbox_dirs(data_dir) if (d / OUTBOX_FILE).exists()]
    if not paths:
        raise ConfigError(f"{data_dir / OUTBOX_FILE}: no outbox yet (nothing was ever forwarded)")
    # WAL lets this process read and write while a running gateway uses the database.
    return [OutboxStore(path, synchronous=config.outbox.synchronous) for path in paths]


def _forwarding_status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from gateway.workers import merged_status

    config = _load(args)
    names = [t.label for t in config.forwardings]
    documents = []
    for store in _open_outboxes(config):
        try:
            known = names + [t for t in store.targets() if t not in names]
            documents.append({"targets": {n: asdict(s) for n, s in store.stats(known).items()}})
        finally:
            store.close()
    targets: dict[str, dict[str, Any]] = merged_status(documents)["targets"]
    if args.json:
        print(json.dumps(targets, indent=2))
        return 0
    print(f"{'target':<24} {'backlog':>9} {'oldest':>9} {'delivered':>10} {'retries':>8} "
          f"{'dead':>7}")
    for name, s in targets.items():
        oldest = "-" if s["oldest_age"] is None else f"{s['oldest_age']:.1f}s"
        print(f"{name:<24} {s['backlog']:>9} {oldest:>9} {s['delivered']:>10} "
              f"{s['retries']:>8} {s['dead_letters']:>7}")
    return 0


def _forwarding_replay(args: argparse.Namespace) -> int:
    config = _load(args)
    stores = _open_outboxes(config)
    try:
        waiting = sum(s.stats([args.target])[args.target].dead_letters for s in stores)
        if waiting == 0:
            print(f"{args.target}: no dead letters")
            return 0
        moved = 0
        for store in stores:  # each worker's outbox (one without workers)
            while True:  # in chunks, each its own transaction, so a running gateway goes on
                store.conn.execute("BEGIN IMMEDIATE")
                count = store.requeue(args.target, transient_only=False, limit=1000)
                store.conn.execute("COMMIT")
                if not count:
                    break
                moved += count
                _progress(moved, waiting)
        print(file=sys.stderr)
    finally:
        for store in stores:
            store.close()
    print(f"{args.target}: {moved} dead letters re-queued")
    return 0


def _progress(done: int, total: int) -> None:
    width = 30
    filled = min(width, width * done // max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrs-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lrs-gateway {__version__}")
    parser.add_argument("--config", help="config file (default: $LRS_GATEWAY_CONFIG or "
                        "./config.yaml)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="json: one object per line, for log shippers")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.set_defaults(run=_serve)
    serve.add_argument("--workers", type=int, default=None,
                       help="processes sharing the port (default: server.workers, 1)")
    serve.add_argument("--worker", help=argparse.SUPPRESS)  # I/N, set by the supervisor
    serve.add_argument("--run-dir", help=argparse.SUPPRESS)
    serve.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
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
    forwarding = commands.add_parser("forwarding", help="the forwarding outbox")
    forwarding_commands = forwarding.add_subparsers(dest="forwarding_command", required=True)
    status = forwarding_commands.add_parser("status", help="per target backlog and totals")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_forwarding_status)
    replay = forwarding_commands.add_parser("replay", help="re-queue a target's dead letters")
    replay.add_argument("--target", required=True, help="the target's name")
    replay.set_defaults(run=_forwarding_replay)
    for sub in (serve, check, add, issue, status, replay):
        sub.add_argument("--config", dest="config", default=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m gateway`."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a worker's command line
    setup_logging(args.log_level, args.log_format)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
