"""Check-and-continue for the project's Python test scripts: every check
runs even after one fails, failures are printed as they happen, and
`finish()` reports and sets the exit status (1 if any failed). The Rust
tests that run a script look for the `checks passed` line.
"""

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
    if failures:
        print(f"{len(failures)} of {passed + len(failures)} checks failed", flush=True)
        sys.exit(1)
    print(f"all {passed} checks passed", flush=True)
