"""Run DiyT's entry points as a user does and judge how they fail: exit code, stderr, no traceback.

`call` runs a stage's or the CLI's `main` in this process (the imports are paid once); `spawn` runs it as a
real subprocess, for the cases where the process boundary itself is under test.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


@cache
def stage(name: str) -> Callable[[list[str]], object]:
    """The `main` of stages/<name>.py."""
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def cli(argv: Sequence[str]) -> Outcome:
    """`python -m diyt ...`, in this process."""
    from diyt.cli import main

    return call(main, argv)


def call(main: Callable[[list[str]], object], argv: Sequence[str]) -> Outcome:
    """Run an entry point's `main(argv)` here; an exception other than SystemExit propagates (a test failure)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = main([str(a) for a in argv])
            code = result if isinstance(result, int) else 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return Outcome(code, out.getvalue(), err.getvalue())


def spawn(args: Sequence[str | os.PathLike], cwd: Path = ROOT, env: dict[str, str] | None = None,
          timeout: float = 120, max_file_bytes: int | None = None) -> Outcome:
    """A real `python <args>` process (the source tree first on its path); `max_file_bytes` caps the size of any
    file it writes (RLIMIT_FSIZE: a longer write fails with EFBIG, as on a full disk)."""
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=cap if max_file_bytes is not None else None)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def refused(outcome: Outcome, *needles: str, code: int = 2) -> str:
    """Assert the run stopped with `code` and one `error: ...` line holding every needle, and no traceback."""
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.code == code, (outcome.code, outcome.stderr)
    assert len(outcome.errors) == 1, outcome.stderr
    message = outcome.errors[0]
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def untouched(folder: Path) -> None:
    """Nothing under `folder` but what was there before: no output, no temporary leftovers."""
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.parts[-1]] \
        if folder.exists() else []
    assert not leftovers, leftovers
