"""User-facing errors: one line naming the input and what to do, no traceback unless asked for."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

VERBOSE_ENV = "DIYT_VERBOSE"

F = TypeVar("F", bound=Callable[..., object])


class DiytError(Exception):
    """An error caused by the user's input (data, params, files); its message is shown as is."""


class ConfigError(DiytError):
    """A params.yaml key is unknown, mistyped or impossible."""


class DataError(DiytError):
    """An image, mask, archive or dataset folder is missing, corrupt or malformed."""


def user_errors(main: F) -> F:
    """Run a command-line entry point, turning a DiytError into one line on stderr and exit code 2.

    Set DIYT_VERBOSE=1 to see the full traceback as well.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except DiytError as err:
            if os.environ.get(VERBOSE_ENV):
                raise
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper  # type: ignore[return-value]
