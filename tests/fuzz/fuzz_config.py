"""Fuzz config loading: YAML text and environment overrides through load_config.

Any YAML and environment end in ConfigError (a message that never shows a secret) or in a
Config that passes its own validation, whose every setting has its declared type, whose
secrets are `Secret` (and absent from its repr), and whose numbers are finite.
Inputs are raw YAML, or mappings built from the real sections and keys with values of any
type; a recognisable secret goes into every secret setting the input sets, from YAML, from
`LRS_GATEWAY__...` variables or from the forwarding targets' JSON variable.

    python tests/fuzz/fuzz_config.py [CORPUS_DIR] [-max_total_time=60] [libFuzzer flags]
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import fuzzing
import yaml

with fuzzing.instrumented():
    from gateway.config.loader import setting_paths
    from gateway.config.settings import (
        FORWARDINGS_ENV,
        Config,
        ForwardingTarget,
        _validate,
        load_config,
    )
    from gateway.errors import ConfigError
    from gateway.secret import Secret

MARKER = "MkR-5ecret-Zz"
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _config_file() -> Path:
    """Where each input is written for load_config: a memory file that vanishes with the
    process (libFuzzer exits without Python's cleanup), else a temporary directory."""
    if hasattr(os, "memfd_create"):
        return Path(f"/proc/self/fd/{os.memfd_create('config.yaml')}")
    return Path(tempfile.mkdtemp(prefix="lrs-gateway-fuzz-config-")) / "config.yaml"


PATH = _config_file()
STRINGS = [
    "http://127.0.0.1:8100/xAPI/",
    "https://lrs.example/xAPI/statements",
    "ftp://x/",
    "basic",
    "oidc",
    "token",
    "callback",
    "1.0.3",
    "2.0.0",
    "1.0",
    "/metrics",
    "metrics",
    "full",
    "normal",
    "10.0.0.0/8",
    "::1",
    "300.1.1.1/8",
    "account",
    "openid",
    "group",
    "RS256",
    "HS256",
    "none",
    "",
    " ",
    "auth.json",
    "~",
    "null",
    "yes",
    "0x10",
    ".nan",
    "1e400",
    "-1",
    "0",
    "1.0e+400",
    "1" + "0" * 400,
]


def _leaves(cls: Any) -> list[tuple[tuple[str, ...], Any]]:
    """Every setting of `cls` (the loader's own walk) with its declared type."""

    def hint(path: tuple[str, ...]) -> Any:
        where: Any = cls
        for name in path:
            where = typing.get_type_hints(where)[name]
        return where

    return [(path, hint(path)) for path in setting_paths(cls)]


def is_secret(hint: Any) -> bool:
    return hint is Secret or Secret in typing.get_args(hint)


LEAVES = _leaves(Config)
TARGET_LEAVES = _leaves(ForwardingTarget)
SECTIONS = sorted({path[0] for path, _ in LEAVES if len(path) > 1})
ENV_NAMES = ["LRS_GATEWAY__" + "__".join(path).upper() for path, _ in LEAVES]
ENV_SECRETS = {
    "LRS_GATEWAY__" + "__".join(path).upper() for path, hint in LEAVES if is_secret(hint)
} | {"RALPH_SENTRY_DSN"}
OTHER_ENV = [
    "RALPH_SENTRY_DSN",
    "RALPH_EXECUTION_ENVIRONMENT",
    "RALPH_SENTRY_LRS_TRACES_SAMPLE_RATE",
    "RALPH_SENTRY_IGNORE_HEALTH_CHECKS",
    "LRS_GATEWAY__",
    "LRS_GATEWAY__STORAGE",
    "LRS_GATEWAY__AUTH__BASIC",
    "LRS_GATEWAY__STORAGE__BASIC_PASSWORD__X",
    "LRS_GATEWAY__FORWARDINGS",
    "LRS_GATEWAY__BASE_DIR",
    "LRS_GATEWAY__NOPE",
]


def value(fdp: Any, depth: int = 0) -> Any:
    """A YAML value of any type."""
    kind = fdp.ConsumeIntInRange(0, 9 if depth < 2 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.PickValueInList([0, 1, -1, 5, 65536, 2**63, 10**30, 10**400])
    if kind == 3:
        return fdp.ConsumeIntInRange(-(2**31), 2**31)
    if kind == 4:
        return fdp.PickValueInList([0.0, -0.0, 0.5, 1.5, 1e-9, math.inf, -math.inf, math.nan])
    if kind == 5:
        return fdp.ConsumeFloat()
    if kind == 6:
        return fdp.PickValueInList(STRINGS)
    if kind == 7:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 16))
    if kind == 8:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return {
        fdp.PickValueInList(STRINGS): value(fdp, depth + 1)
        for _ in range(fdp.ConsumeIntInRange(0, 3))
    }


def secret_value(fdp: Any) -> Any:
    """What an operator might put in a secret setting: mostly the secret, as some type."""
    return fdp.PickValueInList(
        [
            MARKER,
            f"{MARKER}-with more",
            [MARKER],
            {MARKER: MARKER},
            f"http://{MARKER}@127.0.0.1:9/1",
            MARKER + "x" * 40,
        ]
    )


def target(fdp: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "is_active": True,
        "url": "http://127.0.0.1:9/xAPI/statements",
        "basic_username": "u",
        "basic_password": MARKER,
        "max_retries": 1,
        "timeout": 1.0,
        "name": "t",
    }
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        path, hint = fdp.PickValueInList(TARGET_LEAVES)
        choice = fdp.ConsumeIntInRange(0, 3)
        if choice == 0:
            out.pop(path[0], None)
            continue
        # A section of a target (pseudonymise) holds keys of its own.
        put(out, path, secret_value(fdp) if is_secret(hint) else value(fdp))
    return out


def put(node: dict[str, Any], path: tuple[str, ...], leaf: Any) -> None:
    """Set `leaf` at `path` below `node`, making the sections on the way."""
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = leaf


def raw_config(fdp: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        action = fdp.ConsumeIntInRange(0, 9)
        if action == 0:
            raw[fdp.PickValueInList([*SECTIONS, "forwardings", "nope", "base_dir"])] = value(fdp)
        elif action == 1:
            raw["forwardings"] = [target(fdp) for _ in range(fdp.ConsumeIntInRange(0, 2))]
        else:
            path, hint = fdp.PickValueInList(LEAVES)
            put(raw, path, secret_value(fdp) if is_secret(hint) else value(fdp))
    return raw


def environ_from(fdp: Any) -> dict[str, str]:
    environ: dict[str, str] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        which = fdp.ConsumeIntInRange(0, 5)
        if which == 0:
            name = fdp.PickValueInList(list(FORWARDINGS_ENV))
            environ[name] = (
                json.dumps([target(fdp)])
                if fdp.ConsumeBool()
                else fdp.PickValueInList(["[", "{}", "[1]", f'[{{"x": "{MARKER}"}}]', "null", ""])
            )
            continue
        name = fdp.PickValueInList(ENV_NAMES if which > 1 else OTHER_ENV)
        if name in ENV_SECRETS:
            environ[name] = fdp.PickValueInList([MARKER, f"{MARKER} x", f"http://{MARKER}@h/1"])
        elif fdp.ConsumeBool():
            environ[name] = fdp.PickValueInList([*STRINGS, "[1, 2]", "{a: 1}", "[basic]", "'"])
        else:
            environ[name] = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    return environ


def check_types(obj: Any, where: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for fld in dataclasses.fields(obj):
        got, hint = getattr(obj, fld.name), hints[fld.name]
        here = f"{where}{fld.name}"
        if dataclasses.is_dataclass(hint):
            check_types(got, here + ".")
            continue
        if typing.get_origin(hint) in (types.UnionType, typing.Union):
            if got is None:
                continue
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if typing.get_origin(hint) is tuple:
            fuzzing.check(isinstance(got, tuple), f"{here}: {got!r} is not a tuple")
            for index, item in enumerate(got):
                if dataclasses.is_dataclass(item):
                    check_types(item, f"{here}[{index}].")
                else:
                    fuzzing.check(isinstance(item, str), f"{here}[{index}]: {item!r}")
        elif hint is float:
            fuzzing.check(type(got) is float, f"{here}: {got!r} is not a float")
            fuzzing.check(math.isfinite(got), f"{here}: {got!r} accepted")
        elif hint in (int, bool, str, Secret):
            fuzzing.check(type(got) is hint, f"{here}: {got!r} is not a {hint.__name__}")
        else:
            fuzzing.check(
                all(isinstance(k, str) and isinstance(v, str) for k, v in got.items()),
                f"{here}: {got!r}",
            )


def test_one_input(data: bytes) -> None:
    fdp = fuzzing.provider(data)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        text = fdp.ConsumeBytes(fdp.remaining_bytes()).decode("utf-8", "replace")
        environ: dict[str, str] = {}
    else:
        environ = environ_from(fdp)
        text = yaml.dump(raw_config(fdp), Dumper=DUMPER, allow_unicode=fdp.ConsumeBool())
    PATH.write_text(text, encoding="utf-8")
    try:
        config = load_config(PATH, environ)
    except OverflowError:  # float() of an integer too large for one
        if fuzzing.known_bug("config-huge-int"):
            return
        raise
    except ConfigError as error:
        message = str(error)
        fuzzing.check(message, "an empty ConfigError")
        fuzzing.check(MARKER not in message, f"a secret in the error:\n{message}")
        return
    fuzzing.check(isinstance(config, Config), f"load_config gave {config!r}")
    fuzzing.check(_validate(config) == [], f"a loaded config is not valid: {_validate(config)}")
    for shown in (repr(config), str(config)):
        fuzzing.check(MARKER not in shown, f"a secret in the repr:\n{shown}")
    check_types(config, "")
    labels = [t.label for t in config.forwardings]
    fuzzing.check(len(set(labels)) == len(labels), f"two targets named alike: {labels}")


def seeds() -> list[bytes]:
    example = (fuzzing.REPO / "config.yaml").read_bytes()
    return [
        example + b"\x00",
        b"storage:\n  url: http://127.0.0.1:8100/xAPI/\n  basic_username: gw\n"
        b"  basic_password: 4711\n\x00",
        b"storage: {timeout: .nan}\nrate_limit: {per_ip_rate: .nan}\n\x00",
        b"forwardings:\n- {is_active: true, url: 'http://x/xAPI/statements', basic_username: u,"
        b" basic_password: p, max_retries: 1, timeout: 1}\n\x00",
        b"auth: {backends: [basic, token], tokens: {secret: short}}\n\x00",
        b"a: &a [*a]\n\x00",
        b"- 1\n\x00",
        b"\x00",
    ]


DICTIONARY = [
    b"storage",
    b"auth",
    b"backends",
    b"forwardings",
    b"basic_password",
    b"url",
    b"timeout",
    b".nan",
    b".inf",
    b"null",
    b"~",
    b": ",
    b"\n  ",
    b"- ",
    b"{",
    b"[",
    b"&a",
    b"*a",
    b"!!python/object",
    b"'",
    b'"',
]

if __name__ == "__main__":
    fuzzing.main(test_one_input, seeds=seeds(), dictionary=DICTIONARY)
    sys.exit(0)
