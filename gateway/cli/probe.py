"""`check-config --probe`: storage and every forwarding target answer and take their credential.

Storage is asked what readiness asks (`GET statements?limit=1` with the gateway's
credential, gateway.http.readiness). A target is sent what forwarding sends it, with nothing in
it: `POST statements` with an empty batch `[]`, which stores nothing, so a credential
allowed only to write (as a forwarding credential often is) passes too.
"""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.config.settings import Config, ForwardingTarget
from gateway.http.readiness import probe_storage
from gateway.upstream.storage import StorageClient
from gateway.upstream.target import forwarding_target, storage_target

__all__ = ["probe_all", "probe_target"]

Result = tuple[str, bool, str]  # what was probed, whether it passed, what it said


def _credential(target: ForwardingTarget) -> str:
    if target.bearer_token is not None:
        return "its bearer_token"
    if target.basic_username is not None:
        return f"basic_username {target.basic_username!r}"
    return "no credential"


async def probe_target(
    session: aiohttp.ClientSession, target: ForwardingTarget, within: float
) -> Result:
    """POST an empty batch to the target: any answer but 401/403/404/405/5xx passes."""
    name = f"forwardings target {target.label}"
    try:
        async with (
            asyncio.timeout(within),
            session.post(
                target.url,
                data=b"[]",
                headers=dict(forwarding_target(target).headers),
                allow_redirects=False,
            ) as answer,
        ):
            status = answer.status
    except TimeoutError:
        return name, False, f"no answer within {within:g} s"
    except (aiohttp.ClientError, OSError) as exc:
        return name, False, f"cannot reach it ({type(exc).__name__})"
    if status in (401, 403):
        return (
            name,
            False,
            (
                f"answered {status}: it refuses {_credential(target)}; fix the "
                "target's credential (statements wait in the backlog meanwhile)"
            ),
        )
    if status in (404, 405):
        return (
            name,
            False,
            (
                f"answered {status}: url is not a statements endpoint (e.g. "
                "https://lrs2.example.org/xAPI/statements)"
            ),
        )
    if status >= 500:
        return name, False, f"answered {status}"
    return name, True, f"answered {status} to an empty batch with {_credential(target)}"


async def probe_all(config: Config, within: float) -> list[Result]:
    """Probe storage and every active target at once, each within `within` seconds."""
    async with aiohttp.ClientSession() as session:
        storage = StorageClient(session, storage_target(config.storage))
        try:
            check, targets = await asyncio.gather(
                probe_storage(storage, config.xapi.versions[0], within),
                asyncio.gather(
                    *(probe_target(session, t, within) for t in config.forwardings if t.is_active)
                ),
            )
        finally:
            storage.close()
    detail = f"{storage.base_path}: credential accepted" if check.ok else check.detail
    return [("storage", check.ok, detail), *targets]
