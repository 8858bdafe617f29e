"""Time the quick start: how long `bash deploy/demo.sh` takes until the gateway answers.

    python3 deploy/demo/time_demo.py [--fresh] [--keep] [-- DEMO_ARGS...]

Runs deploy/demo.sh (from the checkout this file is in), echoes its output with the seconds
since the start, polls the gateway's `/__lbheartbeat__`, then does what the demo's two curl
commands do (POST a statement with the printed demo credential, GET it back); with
`--with-target` in DEMO_ARGS it also waits for the statement at the forwarding target.
Then it stops the demo with SIGINT (as Ctrl-C does) and prints the timings.

--fresh: run it as on a fresh machine: `git clone` this checkout into a temporary directory
(its committed state: commit first), with HOME, XDG_CACHE_HOME and the pip cache pointing
at empty directories and PIP_NO_CACHE_DIR=1. --keep: keep that clone.
Ports come from LRS_GATEWAY_DEMO_PORT, LRS_GATEWAY_DEMO_RALPH_PORT and
LRS_GATEWAY_DEMO_TARGET_PORT, as for the demo. Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
PASSWORD_LINE = re.compile(r"credential:\s+username (\S+)\s+password (\S+)")
TARGET_LINE = re.compile(r"-u '(gateway:[^']+)'.*\n\s+(http://\S+/xAPI/statements)")


def request(url: str, auth: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One xAPI request; (status, body), or (0, b"") when nothing answers."""
    headers = {
        "Authorization": "Basic " + base64.b64encode(auth.encode()).decode(),
        "X-Experience-API-Version": "1.0.3",
    }
    if body is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=body, headers=headers)  # noqa: S310
    try:
        with OPENER.open(req, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except OSError:
        return 0, b""


def main(argv: list[str]) -> int:
    """Run the demo, time it, stop it; 0 when every check passed."""
    fresh = "--fresh" in argv
    keep = "--keep" in argv
    demo_args = argv[argv.index("--") + 1:] if "--" in argv else []
    env = dict(os.environ)
    workdir = REPO
    scratch = None
    if fresh:
        scratch = Path(tempfile.mkdtemp(prefix="lrs-gateway-demo-time-"))
        workdir = scratch / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(workdir)], check=True)  # noqa: S603, S607
        for name in ("home", "cache"):
            (scratch / name).mkdir()
        env.update(HOME=str(scratch / "home"), XDG_CACHE_HOME=str(scratch / "cache"),
                   PIP_CACHE_DIR=str(scratch / "cache" / "pip"), PIP_NO_CACHE_DIR="1")
        for variable in ("PIP_CONFIG_FILE", "PIP_FIND_LINKS", "XDG_CONFIG_HOME"):
            env.pop(variable, None)
    gateway = f"http://127.0.0.1:{env.get('LRS_GATEWAY_DEMO_PORT', '8080')}"
    output: list[str] = []
    started = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - started

    process = subprocess.Popen(  # noqa: S603
        ["bash", "deploy/demo.sh", *demo_args],  # noqa: S607
        cwd=workdir, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    stream = process.stdout

    def pump() -> None:
        for line in stream:
            output.append(line)
            sys.stdout.write(f"[{elapsed():6.1f}] {line}")
            sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timings: dict[str, float] = {}
    ok = True
    try:
        while process.poll() is None and elapsed() < 600:
            status, _ = request(f"{gateway}/__lbheartbeat__", "x:x")
            if status == 200:
                timings["gateway answers /__lbheartbeat__"] = elapsed()
                break
            time.sleep(0.25)
        else:
            print("the gateway never answered", file=sys.stderr)
            return 1
        while not PASSWORD_LINE.search("".join(output)) and elapsed() < 620:
            time.sleep(0.1)
        match = PASSWORD_LINE.search("".join(output))
        assert match, "no credential line in the demo's output"
        auth = f"{match.group(1)}:{match.group(2)}"
        statement_id = str(uuid.uuid4())
        statement = {"id": statement_id, "actor": {"mbox": "mailto:learner@example.com"},
                     "verb": {"id": "http://adlnet.gov/expapi/verbs/experienced"},
                     "object": {"id": "http://example.com/activities/demo"}}
        status, body = request(f"{gateway}/xAPI/statements", auth, json.dumps(statement).encode())
        print(f"POST /xAPI/statements -> {status} {body[:200]!r}")
        ok &= status == 200
        status, body = request(f"{gateway}/xAPI/statements?statementId={statement_id}", auth)
        print(f"GET /xAPI/statements?statementId=... -> {status}")
        ok &= status == 200 and statement_id.encode() in body
        timings["statement stored and read back through the gateway"] = elapsed()
        if "--with-target" in demo_args:
            target = TARGET_LINE.search("".join(output))
            assert target, "no target curl in the demo's output"
            deadline = time.monotonic() + 30
            arrived = False
            while time.monotonic() < deadline and not arrived:
                status, body = request(f"{target.group(2)}?statementId={statement_id}",
                                       target.group(1))
                arrived = status == 200 and statement_id.encode() in body
                time.sleep(0.2)
            print(f"statement at the forwarding target: {arrived}")
            ok &= arrived
            timings["statement arrived at the forwarding target"] = elapsed()
    finally:
        stop = time.monotonic()
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        reader.join(timeout=5)
        timings["stopped by SIGINT (seconds after the signal)"] = time.monotonic() - stop
        print(f"demo exit status after SIGINT: {code}")
        if scratch is not None:
            if keep:
                print(f"kept {scratch}")
            else:
                shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nTimings ({'fresh clone, empty HOME and caches' if fresh else str(workdir)}; "
          f"demo args: {' '.join(demo_args) or 'none'}):")
    for what, seconds in timings.items():
        print(f"  {seconds:6.1f} s  {what}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
