"""Start a Ralph LRS API (FastAPI app `ralph.api:app`) under uvicorn, without a reloader.

Run it with the Python of the Ralph venv (`.venv-ralph/bin/python`), not the gateway's:

    python ralph_launcher.py HOST PORT

Ralph reads the rest of its configuration from the environment, e.g.
`RALPH_RUNSERVER_BACKEND=fs`, `RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH=<dir>`,
`RALPH_AUTH_FILE=<auth.json>`.

Ralph 5.1.0's filesystem backend writes with `operation_type=CREATE` by default, which
refuses every write after the first one ("... already exists and overwrite is not
allowed"); the LRS needs appends, so the default is switched before the app is imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file sits next to `ralph.py` (the test helper), which would shadow the `ralph`
# package when this directory is sys.path[0], as it is for `python ralph_launcher.py`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def main(argv: list[str]) -> int:
    """Configure the fs backend for appends and serve `ralph.api:app` with uvicorn."""
    if len(argv) != 3:
        sys.stderr.write(f"usage: {argv[0]} HOST PORT\n")
        return 2
    host, port = argv[1], int(argv[2])

    import uvicorn  # type: ignore[import-not-found, unused-ignore]
    from ralph.backends.data.base import (  # type: ignore[import-not-found, unused-ignore]
        BaseOperationType,
    )
    from ralph.backends.lrs.fs import (  # type: ignore[import-not-found, unused-ignore]
        FSLRSBackend,
    )

    FSLRSBackend.default_operation_type = BaseOperationType.APPEND

    from ralph.api import app  # type: ignore[import-not-found, unused-ignore]

    uvicorn.run(app, host=host, port=port, log_level="info", access_log=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
