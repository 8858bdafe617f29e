"""Fuzz the `more` link mapping: upstream_tail_of_more, gateway_more, and the paging URL.

Whatever `more` an LRS sends: mapping it never raises (the gateway would answer 500); a
mapped link is the gateway's `/xAPI/` (under `server.public_url` when set) plus the tail,
and still under `/xAPI/` once a client resolves its dot segments; the URL the gateway itself
fetches for the next page (read/mine) stays on the storage host, under its xAPI base.

    python tests/fuzz/fuzz_more.py [CORPUS_DIR] [-max_total_time=60] [libFuzzer flags]
"""

from __future__ import annotations

import posixpath
import sys
from typing import Any
from urllib.parse import unquote

import fuzzing

with fuzzing.instrumented("yarl"):
    from gateway.config.settings import StorageConfig
    from gateway.upstream.storage import StorageClient
    from gateway.upstream.target import storage_target
    from gateway.xapi.results import gateway_more, upstream_tail_of_more

STORAGES = [
    "http://lrs.internal:8100/xAPI/",
    "https://lrs.example/lrs/xAPI/",
    "http://127.0.0.1:8100/",
    "http://lrs.example/a%20b/xAPI",
]
PUBLIC_URLS = [None, "https://gw.example", "https://gw.example/lrs/", "http://gw.example:8080/p"]
SCHEMES = ["", "http://", "https://", "//", "HTTP://", "ftp://", "javascript:"]
HOSTS = [
    "lrs.internal:8100",
    "lrs.example",
    "127.0.0.1:8100",
    "[::1]:8100",
    "[::1",
    "h:99999",
    "user:pw@lrs.example",
    "evil.example",
    "%zz",
    "",
]
SEGMENTS = [
    "xAPI",
    "lrs",
    "statements",
    "a%20b",
    "..",
    ".",
    "%2e%2e",
    "%2E%2e",
    ".%2e",
    "%2f",
    "%2F",
    "\\",
    "..\\..",
    "%5c",
    "%00",
    "\x00",
    "",
    "a b",
    "@evil.example",
    ":",
    ";x",
    "%",
    "é",
    "\ufeff",
]
QUERIES = [
    "",
    "?since=2024-01-01T00:00:00Z&limit=10",
    "?more=abc%3D%3D",
    "?",
    "?a=%zz",
    "#frag",
    "?x=1#y",
    "?%00",
    "?a=b c",
]
UPSTREAMS = {
    url: StorageClient(None, storage_target(StorageConfig(url=url)))  # type: ignore[arg-type]
    for url in STORAGES
}


def more_from(fdp: Any) -> str:
    if fdp.ConsumeIntInRange(0, 3) == 0:
        return str(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 120)))
    path = "/".join(
        fdp.PickValueInList(SEGMENTS) if fdp.ConsumeIntInRange(0, 4) else fdp.ConsumeUnicode(4)
        for _ in range(fdp.ConsumeIntInRange(0, 6))
    )
    scheme = fdp.PickValueInList(SCHEMES)
    host = fdp.PickValueInList(HOSTS) if scheme.endswith("/") else ""
    lead = "/" if fdp.ConsumeIntInRange(0, 5) else ""
    return f"{scheme}{host}{lead}{path}{fdp.PickValueInList(QUERIES)}"


def resolved_path(link_path: str) -> str:
    """The path a client ends up asking for: %-decoded dots, backslashes as slashes, dot
    segments removed (what browsers and most HTTP clients do)."""
    text = unquote(link_path, errors="replace").replace("\\", "/")
    normal = posixpath.normpath(text)
    return normal + ("/" if text.endswith("/") and normal != "/" else "")


def test_one_input(data: bytes) -> None:
    fdp = fuzzing.provider(data)
    storage = UPSTREAMS[fdp.PickValueInList(STORAGES)]
    public_url = fdp.PickValueInList(PUBLIC_URLS)
    more = more_from(fdp)
    try:
        tail = upstream_tail_of_more(more, storage.base_path)
    except (ValueError, IndexError) as exc:  # yarl: IndexError for 'http://[x]@/'
        if fuzzing.known_bug("more-raises"):
            return
        fuzzing.fail(f"upstream_tail_of_more({more!r}) raised {exc!r}")
    if tail is None:
        return
    fuzzing.check(isinstance(tail, str) and "#" not in tail, f"tail {tail!r} of {more!r}")
    link = gateway_more(tail, public_url)
    prefix = (public_url.rstrip("/") if public_url else "") + "/xAPI/"
    fuzzing.check(link == prefix + tail, f"{more!r} mapped to {link!r}")
    path, _, query = tail.partition("?")
    escapes = not resolved_path("/xAPI/" + path).startswith("/xAPI/") or "\0" in unquote(path)
    if escapes and not fuzzing.known_bug("more-escapes"):
        fuzzing.fail(f"{more!r} mapped to {link!r}, which leads out of /xAPI/")
    try:  # read/mine pages on with this: storage.request("GET", path, raw_query=query)
        url = storage.url(path, query)
    except (ValueError, IndexError) as exc:
        if fuzzing.known_bug("more-raises"):
            return
        fuzzing.fail(f"the next page URL for {more!r} cannot be built: {exc!r}")
    fuzzing.check(
        (url.scheme, url.host, url.port)
        == (storage.base.scheme, storage.base.host, storage.base.port),
        f"{more!r}: the gateway would fetch {url} from another host",
    )
    if not escapes:
        fuzzing.check(
            url.raw_path.startswith(storage.base_path),
            f"{more!r}: the gateway would fetch {url}, outside {storage.base_path}",
        )


def seeds() -> list[bytes]:
    # Numbers come from the end of the data: mode, then the choices, read backwards.
    return [
        b"http://lrs.internal:8100/xAPI/statements?more=abc\x01\x00\x00" + b"\x00" * 4,
        b"/xAPI/statements?since=x" + b"\x00\x00\x00",
        b"/xAPI/../admin/forwarding\x00\x01\x00",
        b"http://[::1/xAPI/statements\x00\x00\x00",
        b"/lrs/xAPI/%2e%2e/%2e%2e/metrics\x00\x01\x01",
        bytes(range(32, 127)),
    ]


DICTIONARY = [
    b"/xAPI/",
    b"/lrs/xAPI/",
    b"statements",
    b"..",
    b"%2e",
    b"%2E",
    b"%2f",
    b"%5c",
    b"\\",
    b"%00",
    b"://",
    b"http://",
    b"[::1]",
    b"?more=",
    b"#",
    b"@",
    b":8100",
]

if __name__ == "__main__":
    fuzzing.main(test_one_input, seeds=seeds(), dictionary=DICTIONARY)
    sys.exit(0)
