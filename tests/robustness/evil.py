"""A weights file that is really a pickle, and would run code if anything unpickled it."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path


class _Payload:
    """Unpickling this calls os.mkdir(marker): the marker's existence proves the pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def pickled_weights(marker: Path) -> bytes:
    """A torch.save-style zip (archive/data.pkl) whose pickle creates `marker` when loaded."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"weight": _Payload(marker)}, protocol=2))
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


def raw_pickle(marker: Path) -> bytes:
    """A bare pickle (the pre-zip torch.save format) whose loading creates `marker`."""
    return pickle.dumps(_Payload(marker), protocol=2)
