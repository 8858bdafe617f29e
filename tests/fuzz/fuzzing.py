"""What every atheris harness in this folder shares: setup, seeds, invariants, known bugs.

A harness is a script: `python tests/fuzz/fuzz_X.py [CORPUS_DIR ...] [libFuzzer flags]`.
An empty (or missing) corpus directory given first is filled with the harness's seeds; with
no directory at all, the seeds go to a fresh temporary one. A `-dict=` of the harness's
tokens is added unless one is given. An input that breaks an invariant raises
`InvariantError`: libFuzzer then stops, writes the input to `crash-<sha1>` (see
`-artifact_prefix=`) and exits non-zero.

Known bugs: each harness may tolerate the bugs named in `KNOWN_BUGS` (each has a strict
xfail test in tests/test_fuzz.py that reproduces it), so that a short CI run keeps looking
for new ones. `FUZZ_STRICT=1` tolerates none. When a bug is fixed, its xfail test passes
(XPASS, which fails the strict marker): delete the entry here and the marker there.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script from anywhere: the gateway package is here
    sys.path.insert(0, str(REPO))

import atheris  # type: ignore[import-untyped]  # noqa: E402

__all__ = [
    "KNOWN_BUGS",
    "InvariantError",
    "check",
    "fail",
    "instrumented",
    "known_bug",
    "main",
    "provider",
]

# name -> where it is and which test reproduces it.
KNOWN_BUGS: dict[str, str] = {}
STRICT = os.environ.get("FUZZ_STRICT") == "1"


class InvariantError(AssertionError):
    """An input broke a property the gateway promises."""


def fail(message: str) -> NoReturn:
    """Stop the run: this input broke an invariant."""
    raise InvariantError(message)


def check(condition: object, message: str) -> None:
    """`fail(message)` unless `condition` (kept under `python -O`, unlike assert)."""
    if not condition:
        fail(message)


def known_bug(name: str) -> bool:
    """Whether to let this input pass because it shows known bug `name`.

    Never when strict, and never once the bug is fixed and its entry gone.
    """
    return name in KNOWN_BUGS and not STRICT


def instrumented(*also: str) -> Any:
    """Context manager: the gateway's modules (and `also`'s) imported inside it get coverage
    and comparison feedback."""
    return atheris.instrument_imports(include=["gateway", *also])


def provider(data: bytes) -> Any:
    """atheris's FuzzedDataProvider over `data`."""
    return atheris.FuzzedDataProvider(data)


def noise(count: int = 8, size: int = 400) -> list[bytes]:
    """Deterministic pseudo-random seeds: long enough that every choice a harness reads
    from the end of the data is varied from the first run on."""
    return [
        hashlib.shake_256(b"lrs-gateway-fuzz-%d" % index).digest(size) for index in range(count)
    ]


def _dict_entry(token: bytes) -> str:
    return (
        '"'
        + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\x{b:02x}" for b in token)
        + '"'
    )


def _prepare_args(
    argv: Sequence[str], seeds: Sequence[bytes], dictionary: Sequence[bytes]
) -> list[str]:
    args = list(argv)
    positional = [a for a in args[1:] if not a.startswith("-")]
    if not positional:
        corpus = Path(tempfile.mkdtemp(prefix="lrs-gateway-fuzz-"))
        args.insert(1, str(corpus))
        positional = [str(corpus)]
    first = Path(positional[0])
    if not first.is_file() and (not first.exists() or not any(first.iterdir())):
        first.mkdir(parents=True, exist_ok=True)
        for index, seed in enumerate([*seeds, *noise()]):
            (first / f"seed-{index:03d}").write_bytes(seed)
    if dictionary and not any(a.startswith("-dict=") for a in args):
        text = "".join(_dict_entry(t) + "\n" for t in dictionary)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"lrs-gateway-fuzz-{digest}.dict"
        if not path.exists():  # written whole, then renamed: parallel runs may share it
            partial = path.with_name(f"{path.name}.{os.getpid()}")
            partial.write_text(text, encoding="ascii")
            partial.replace(path)
        args.append(f"-dict={path}")
    return args


def main(
    test_one_input: Callable[[bytes], None],
    *,
    seeds: Sequence[bytes],
    dictionary: Sequence[bytes] = (),
) -> None:
    """Run libFuzzer on `test_one_input` with this process's arguments (does not return)."""
    atheris.Setup(_prepare_args(sys.argv, seeds, dictionary), test_one_input)
    atheris.Fuzz()
