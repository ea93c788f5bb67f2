"""Check-and-continue for the project's Python test scripts: every check
runs even after one fails, failures are printed as they happen, and
`finish()` reports and sets the exit status (1 if any failed). The Rust
tests that run a script look for the `checks passed` line.
"""

import os
import sys

failures: list[str] = []
passed = 0


def check(condition: bool, what: str) -> None:
    global passed
    if condition:
        passed += 1
    else:
        failures.append(what)
        print(f"FAILED: {what}", flush=True)


def finish() -> None:
    """Reports and exits at once. `os._exit`, not `sys.exit`: grpcio's
    background threads can hold interpreter shutdown (CI once saw "all 12
    checks passed" and then no exit for over 25 s), and the verdict is
    already printed and flushed, so nothing is left to clean up."""
    if failures:
        print(f"{len(failures)} of {passed + len(failures)} checks failed", flush=True)
    else:
        print(f"all {passed} checks passed", flush=True)
    sys.stderr.flush()
    os._exit(1 if failures else 0)
