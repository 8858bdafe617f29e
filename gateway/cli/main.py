"""The `lrs-gateway` command: serve, check-config, config, auth, credentials, token, forwarding, ...

Exit codes: 0 ok; 1 a problem (the configuration, a file, a probe, an operation that
failed); 2 a usage error (the command line itself).
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway import __version__
from gateway.auth.credentials import parse_credentials
from gateway.cli import (
    auth_commands,
    backfill_command,
    config_commands,
    credentials_commands,
    lockout_commands,
    store_commands,
)
from gateway.config.settings import BasicAuthConfig, Config
from gateway.errors import ConfigError
from gateway.runtime.logs import setup_logging

if TYPE_CHECKING:
    from gateway.forwarding.store import OutboxStore
    from gateway.runtime.workers import WorkerRole

__all__ = ["main"]

log = logging.getLogger("gateway")
EXIT_HELP = """exit codes:
  0  ok
  1  a problem: the configuration, a file, a probe, or an operation that failed
  2  a usage error: the command line itself
"""


class UsageError(Exception):
    """The command line asks for something it cannot (exit 2)."""


def _load(args: argparse.Namespace) -> Config:
    """The configuration, or ConfigError with every problem (logs its warnings and notes)."""
    _, report = config_commands.config_report(args)
    if report.errors or report.config is None:
        raise ConfigError("\n".join(report.errors))
    for line in report.warnings:
        log.warning("configuration: %s", line)
    for line in report.notes:
        log.info("configuration: %s", line)
    return report.config


def _worker_role(args: argparse.Namespace) -> WorkerRole | None:
    from gateway.runtime.workers import WorkerRole

    if args.worker is None:
        return None
    index, _, count = args.worker.partition("/")
    if (
        not (index.isdigit() and count.isdigit() and int(index) < int(count))
        or not args.run_dir
        or args.supervisor is None
    ):
        raise UsageError(
            "--worker I/N, --run-dir and --supervisor are set by `serve --workers N` only"
        )
    # The pid from the supervisor itself: were it gone before this process asked, its
    # parent would already be someone else.
    return WorkerRole(int(index), int(count), Path(args.run_dir), supervisor=args.supervisor)


def _refuse_stranded_outboxes(config: Config, workers: int) -> None:
    from gateway.runtime.workers import stranded_backlogs

    stranded = stranded_backlogs(config.resolve_path(config.data_dir), workers)
    if stranded:
        listed = ", ".join(f"{path} ({count} statements)" for path, count in stranded.items())
        raise ConfigError(
            f"an earlier run with more workers left statements to forward in {listed}: "
            f"serve with --workers {max(int(p.name.split('-')[1]) for p in stranded) + 1} "
            "until `lrs-gateway forwarding status` shows no backlog, then with fewer"
        )


def is_postgres(config: Config) -> bool:
    """Whether `store.url` names PostgreSQL (imported here: asyncpg loads only when needed)."""
    from gateway.store.databases import is_postgres as named

    return named(config)


def _refuse_local_backlog(config: Config) -> None:
    """Switching to PostgreSQL must not strand what the SQLite outboxes still owe."""
    from gateway.runtime.workers import stranded_backlogs

    data_dir = config.resolve_path(config.data_dir)
    stranded = stranded_backlogs(data_dir, 0)
    for tenant in config.tenants:  # each tenant's outboxes, in each worker's directory
        for directory in [data_dir, *data_dir.glob("worker-*")]:
            tenant_dir = directory / "tenants" / tenant.name
            if tenant_dir.is_dir():
                stranded |= stranded_backlogs(tenant_dir, 0)
    if stranded:
        listed = ", ".join(f"{path} ({count} statements)" for path, count in stranded.items())
        raise ConfigError(
            f"store.url is PostgreSQL, but the SQLite outboxes in {listed} still hold "
            "statements to forward, which it does not read: with those gateways stopped, "
            "`lrs-gateway store copy --to <store.url>` moves them (or serve without "
            "store.url until `lrs-gateway forwarding status` shows no backlog)"
        )


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the other commands start three times faster without aiohttp.
    from gateway.http.app import create_app
    from gateway.runtime.sentry import setup_sentry
    from gateway.runtime.serving import run
    from gateway.runtime.supervisor import supervise, worker_command
    from gateway.runtime.workers import retire_outboxes, worker_data_dir

    config = _load(args)
    server = replace(
        config.server,
        **{
            key: getattr(args, key)
            for key in ("host", "port")
            if getattr(args, key, None) is not None
        },
    )
    config = replace(config, server=server)
    problems, warnings = config_commands.check_auth(config)
    if problems:
        raise ConfigError("\n".join(problems))
    role = _worker_role(args)
    if role is None:
        for line in warnings:
            log.warning("%s", line)
        workers = config.server.workers if args.workers is None else args.workers
        if workers < 1:
            raise UsageError("--workers: must be at least 1")
        data_dir = config.resolve_path(config.data_dir)
        if is_postgres(config):
            _refuse_local_backlog(config)
        else:
            _refuse_stranded_outboxes(config, workers)
            if data_dir.is_dir():
                retire_outboxes(data_dir, workers)
        if workers > 1:
            if config.server.port == 0:
                raise ConfigError("server.port: workers share one port; 0 (any) cannot be")
            _tune_runtime()
            return supervise(
                worker_command(args.argv), workers, stop_timeout=config.server.shutdown_timeout
            )
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
        log.info(
            "lrs-gateway %s%s listening on http://%s:%d/ (storage %s)",
            __version__,
            worker,
            host,
            port,
            shown,
        )

    _tune_runtime()
    try:
        run(
            app,
            host=host,
            port=port,
            shutdown_timeout=config.server.shutdown_timeout,
            header_timeout=config.limits.header_timeout,
            on_listening=listening,
            reuse_port=role is not None,
        )
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


def _credentials_path(args: argparse.Namespace) -> tuple[Path, str, str]:
    """(file, scope prefix, account homepage): `--file` as is, else the config's."""
    if getattr(args, "file", None):
        return Path(args.file), "", BasicAuthConfig.account_homepage
    config = _load(args)
    basic = config.auth.basic
    return (
        config.resolve_path(basic.credentials_file),
        config.auth.scope_prefix,
        basic.account_homepage,
    )


def _auth_add(args: argparse.Namespace) -> int:
    write = args.write or args.file is not None
    path = prefix = None
    try:
        # Everything checked before the password is typed, the file included.
        if write:
            path, prefix, _ = _credentials_path(args)
            auth_commands.read_entries(path)
        auth_commands.check_request(args, prefix or "")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if isinstance(exc, auth_commands.FileProblem) else 2
    password = args.password
    if password is None:
        password = getpass.getpass("Password: ")
        if password != getpass.getpass("Password (again): "):
            print("the passwords differ", file=sys.stderr)
            return 2
    try:
        entry = auth_commands.build_entry(args, password, prefix or "")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if path is None:
        print(json.dumps(entry, indent=2))
        return 0
    try:
        replaced = auth_commands.write_entry(path, entry)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'replaced' if replaced else 'added'} {args.username} in {path}")
    return 0


def _auth_list(args: argparse.Namespace) -> int:
    path, _, homepage = _credentials_path(args)
    try:
        users = auth_commands.list_entries(path, homepage)
    except (ValueError, OSError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(users, indent=2))
        return 0
    width = max([len("username"), *(len(u["username"]) for u in users)])
    print(f"{'username':<{width}}  {'scopes':<40}  agent")
    for user in users:
        print(
            f"{user['username']:<{width}}  {' '.join(user['scopes']):<40}  "
            f"{json.dumps(user['agent'], separators=(',', ':'))}"
        )
    return 0


def _auth_remove(args: argparse.Namespace) -> int:
    path, _, _ = _credentials_path(args)
    try:
        removed = auth_commands.remove_entry(path, args.username)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not removed:
        print(f"error: no user {args.username!r} in {path}", file=sys.stderr)
        return 1
    print(f"removed {args.username} from {path}")
    return 0


def _token_issue(args: argparse.Namespace) -> int:
    """Sign a token for a user of the credentials file, as POST /token would for them."""
    from gateway.auth.principal import Principal
    from gateway.auth.tokens import TokenSigner
    from gateway.errors import Forbidden

    config = _load(args)
    basic = config.auth.basic
    path = config.resolve_path(basic.credentials_file)
    try:
        signer = TokenSigner(config.auth.tokens, Path(config.base_dir))
        users = parse_credentials(
            path.read_text(encoding="utf-8"),
            account_homepage=basic.account_homepage,
            scope_prefix=config.auth.scope_prefix,
        ).users
    except (OSError, ValueError, AssertionError) as exc:
        print(f"error: {exc or 'auth.tokens needs a secret or private_key_file'}", file=sys.stderr)
        return 1
    user = users.get(args.username)
    if user is None:
        print(f"error: no user {args.username!r} in {path}", file=sys.stderr)
        return 1
    principal = Principal(id=user.username, agent=user.agent, scopes=user.scopes, scheme="basic")
    try:
        token, expires = signer.issue(principal, args.scopes, args.expires_in)
    except Forbidden as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    # As POST /token answers.
    expires_at = datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z")
    print(json.dumps({"token": token, "token_type": "Bearer", "expires_at": expires_at}))
    return 0


def _open_outboxes(config: Config) -> list[OutboxStore]:
    """The outbox of a single process, or of every worker (`serve --workers`)."""
    from gateway.forwarding.forwarder import OUTBOX_FILE
    from gateway.forwarding.store import OutboxStore
    from gateway.runtime.workers import outbox_dirs

    data_dir = config.resolve_path(config.data_dir)
    tenants = [Path("tenants") / t.name for t in config.tenants]
    paths = [
        path
        for d in outbox_dirs(data_dir)
        for path in (d / OUTBOX_FILE, *(d / t / OUTBOX_FILE for t in tenants))
        if path.exists()
    ]
    if not paths:
        raise ConfigError(f"{data_dir / OUTBOX_FILE}: no outbox yet (nothing was ever forwarded)")
    # WAL lets this process read and write while a running gateway uses the database.
    return [OutboxStore(path, synchronous=config.outbox.synchronous) for path in paths]


def _forwarding_status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from gateway.runtime.workers import merged_status

    config = _load(args)
    names = [t.label for t in config.forwardings]
    documents = []
    if is_postgres(config):
        from gateway.cli.shared_outbox import status_document

        documents.append(status_document(config))
    for store in [] if is_postgres(config) else _open_outboxes(config):
        try:
            known = names + [t for t in store.targets() if t not in names]
            documents.append({"targets": {n: asdict(s) for n, s in store.stats(known).items()}})
        finally:
            store.close()
    targets: dict[str, dict[str, Any]] = merged_status(documents)["targets"]
    if args.json:
        print(json.dumps(targets, indent=2))
        return 0
    print(
        f"{'target':<24} {'state':<5} {'backlog':>9} {'oldest':>9} {'delivered':>10} "
        f"{'retries':>8} {'dead letters':>12} {'filtered':>9}"
    )
    for name, s in targets.items():
        oldest = "-" if s["oldest_age"] is None else f"{s['oldest_age']:.1f}s"
        print(
            f"{name:<24} {s.get('state', '-'):<5} {s['backlog']:>9} {oldest:>9} "
            f"{s['delivered']:>10} {s['retries']:>8} {s['dead_letters']:>12} "
            f"{s.get('filtered', 0):>9}"
        )
    for name, s in targets.items():
        if s.get("state") == "down":
            since = s.get("down_since")
            when = (
                ""
                if since is None
                else " since "
                + datetime.fromtimestamp(since, UTC)
                .isoformat(timespec="seconds")
                .replace("+00:00", "Z")
            )
            print(f"{name}: down{when}: {s.get('last_error') or 'no answer'}")
    for name, s in targets.items():
        if s.get("backfill"):
            print(_backfill_line(name, s["backfill"], s.get("backfilled", 0)))
    print(
        "(dead letters: statements a target refused for good; "
        "`forwarding replay --target NAME` sends them again)"
    )
    return 0


def _backfill_line(name: str, backfill: dict[str, Any], backfilled: int) -> str:
    """One target's backfill, as `forwarding status` shows it."""
    import time

    from gateway.forwarding.store import BackfillState

    state = BackfillState.from_document(backfill)
    if state is None:
        return f"{name}: a backfill this version cannot read"
    how = state.status(time.time())
    if how == "interrupted":
        how += " (`forwarding backfill` again resumes it)"
    return (
        f"{name}: backfill {how}, {state.fraction:.0%} of ({state.since or 'the beginning'}, "
        f"{state.until}]: {state.queued} queued, {state.skipped} left to live forwarding "
        f"({backfilled} backfilled in all)"
    )


def _shared_replay(config: Config, target: str) -> int:
    from gateway.cli.shared_outbox import replay, status_document

    targets = status_document(config)["targets"]
    if target not in targets:
        print(
            f"error: no forwarding target named {target!r} (known: "
            f"{', '.join(sorted(targets)) or 'none'})",
            file=sys.stderr,
        )
        return 1
    waiting = targets[target]["dead_letters"]
    if waiting == 0:
        print(f"{target}: no dead letters")
        return 0
    moved = replay(config, target, lambda count: _progress(count, waiting))
    print(file=sys.stderr)
    print(f"{target}: {moved} dead letters re-queued")
    return 0


def _forwarding_replay(args: argparse.Namespace) -> int:
    config = _load(args)
    if is_postgres(config):
        return _shared_replay(config, args.target)
    stores = _open_outboxes(config)
    try:
        known = sorted(
            {t.label for t in config.forwardings} | {t for store in stores for t in store.targets()}
        )
        if args.target not in known:
            print(
                f"error: no forwarding target named {args.target!r} (known: "
                f"{', '.join(known) or 'none'})",
                file=sys.stderr,
            )
            return 1
        waiting = sum(s.stats([args.target])[args.target].dead_letters for s in stores)
        if waiting == 0:
            print(f"{args.target}: no dead letters")
            return 0
        moved = 0
        for store in stores:  # each worker's outbox (one without workers)
            before = moved

            def progress(count: int, before: int = before) -> None:
                _progress(before + count, waiting)

            moved += store.replay_dead_letters(args.target, progress)
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


def _global_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Flags every command takes, before or after its name (`serve --config x`).

    After the name they override what came before only when given (SUPPRESS).
    """

    def default(value: str | None) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        default=default(None),
        help="config file (default: $LRS_GATEWAY_CONFIG or ./config.yaml)",
    )
    parser.add_argument(
        "--log-level", default=default("INFO"), choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument(
        "--log-format",
        default=default("text"),
        choices=["text", "json"],
        help="json: one object per line, for log shippers",
    )


def _command(commands: Any, name: str, run: Any, help_text: str) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if run is not None:
        sub.set_defaults(run=run)
        _global_flags(sub, defaults=False)
    return sub


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrs-gateway",
        description=__doc__,
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lrs-gateway {__version__}")
    _global_flags(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = _command(commands, "serve", _serve, "run the gateway")
    serve.add_argument("--host", help="listen on this address (default: server.host)")
    serve.add_argument("--port", type=int, help="listen on this port (default: server.port)")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes sharing the port (default: server.workers, 1)",
    )
    serve.add_argument("--worker", help=argparse.SUPPRESS)  # I/N, set by the supervisor
    serve.add_argument("--run-dir", help=argparse.SUPPRESS)
    serve.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    check = _command(
        commands,
        "check-config",
        config_commands.check_config,
        "report every problem of the configuration and the files it names",
    )
    check.add_argument(
        "--probe",
        action="store_true",
        help="also check that storage and every active forwarding target "
        "answer and accept their credentials (targets get an empty batch)",
    )
    check.add_argument(
        "--timeout", type=float, default=5.0, help="seconds each probe may take (default 5)"
    )
    config = _command(commands, "config", None, "the configuration")
    config_parsers = config.add_subparsers(dest="config_command", required=True)
    show = _command(
        config_parsers,
        "show",
        config_commands.show_config,
        "the configuration in effect, secrets masked, with where each value "
        "came from (default, FILE:LINE, env VARIABLE)",
    )
    show.add_argument("--json", action="store_true")
    auth = _command(commands, "auth", None, "manage Basic credentials")
    auth_parsers = auth.add_subparsers(dest="auth_command", required=True)
    add = _command(auth_parsers, "add", _auth_add, "create a credential (Ralph format)")
    auth_commands.add_arguments(add)
    listing = _command(
        auth_parsers,
        "list",
        _auth_list,
        "the users of the credentials file: username, scopes, agent",
    )
    listing.add_argument("--file", help="credentials file (default: the config's)")
    listing.add_argument("--json", action="store_true")
    remove = _command(
        auth_parsers, "remove", _auth_remove, "remove a user from a JSON credentials file"
    )
    remove.add_argument("-u", "--username", required=True)
    remove.add_argument("--file", help="credentials file (default: the config's)")
    token = _command(commands, "token", None, "gateway-issued bearer tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = _command(
        token_commands,
        "issue",
        _token_issue,
        "sign a token for a credentials-file user (never with admin or tokens/issue)",
    )
    issue.add_argument("-u", "--username", required=True)
    issue.add_argument(
        "-s",
        "--scope",
        action="append",
        default=[],
        dest="scopes",
        required=True,
        help="repeat for several; within the user's scopes",
    )
    issue.add_argument(
        "--expires-in",
        type=float,
        default=3600.0,
        help="seconds (capped by auth.tokens.max_lifetime)",
    )
    forwarding = _command(commands, "forwarding", None, "the forwarding outbox")
    forwarding_commands = forwarding.add_subparsers(dest="forwarding_command", required=True)
    status = _command(
        forwarding_commands,
        "status",
        _forwarding_status,
        "per target: state, backlog, oldest age, delivered, retries, dead letters",
    )
    status.add_argument("--json", action="store_true")
    replay = _command(
        forwarding_commands, "replay", _forwarding_replay, "re-queue a target's dead letters"
    )
    replay.add_argument("--target", required=True, help="the target's name")
    backfill_command.add_parser(forwarding_commands, _command, _load)
    lockout = _command(commands, "lockout", None, "failed-login lockouts")
    lockout_parsers = lockout.add_subparsers(dest="lockout_command", required=True)
    clear = _command(
        lockout_parsers,
        "clear",
        _lockout_clear,
        "lift a lockout in the running gateway now (POST /admin/lockout/clear)",
    )
    lockout_commands.add_arguments(clear)
    credentials_commands.add_parsers(commands, _command, _load)
    store_commands.add_parsers(commands, _command, _load)
    return parser


def _lockout_clear(args: argparse.Namespace) -> int:
    return lockout_commands.clear(args, None if args.url else _load(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m gateway`."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # a worker's command line
    setup_logging(args.log_level, args.log_format)
    try:
        code: int = args.run(args)
    except ConfigError as exc:
        print(f"configuration error:\n{exc}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
