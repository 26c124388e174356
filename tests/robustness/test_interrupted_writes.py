"""A process killed in the middle of an atomic write leaves its target as it was (or absent), and the next write
of the same target clears what the killed one left beside it. (The whole pipeline under SIGKILL: test_kill.py.)"""

from __future__ import annotations

import signal

import pytest

from clirun import spawn
from diyt.io import atomic_dir, atomic_path, write_text

KILLED_WRITE = """
import os, signal, sys
from pathlib import Path
from diyt.io import atomic_dir, atomic_path
target = Path(sys.argv[1])
if sys.argv[2] == "dir":
    with atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        os.kill(os.getpid(), signal.SIGKILL)
with atomic_path(target) as tmp:
    tmp.write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kind", ["dir", "file"])
@pytest.mark.parametrize("existed", [False, True])
def test_a_killed_write_leaves_the_old_output_and_the_next_cleans_up(tmp_path, kind, existed):
    target = tmp_path / "out" / "target"
    target.parent.mkdir()
    if existed:
        with (atomic_dir(target) if kind == "dir" else atomic_path(target)) as tmp:
            (tmp / "old.txt" if kind == "dir" else tmp).write_text("old")
    outcome = spawn(["-c", KILLED_WRITE, target, kind])
    assert outcome.code == -signal.SIGKILL
    left = sorted(p.name for p in target.parent.iterdir())
    assert left[0].startswith(".target.") and left[0].endswith(".tmp") and len(left) == 1 + existed
    if existed:
        assert (target / "old.txt" if kind == "dir" else target).read_text() == "old"

    with (atomic_dir(target) if kind == "dir" else atomic_path(target)) as tmp:
        (tmp / "new.txt" if kind == "dir" else tmp).write_text("new")
    assert sorted(p.name for p in target.parent.iterdir()) == ["target"]
    assert (target / "new.txt" if kind == "dir" else target).read_text() == "new"


def test_a_replaced_folder_left_by_a_kill_is_cleared(tmp_path):
    """Killed between moving the old folder aside and moving the new one in: the next write clears the old copy."""
    target = tmp_path / "target"
    (tmp_path / ".target.old").mkdir()
    (tmp_path / ".target.old" / "old.txt").write_text("old")
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_only_the_targets_own_temporaries_are_cleared(tmp_path):
    (tmp_path / ".target.json.abcd1234.tmp").write_text("another output's temporary")
    (tmp_path / ".target.abcd1234.tmp.keep").write_text("not a temporary")
    write_text(tmp_path / "target", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".target.abcd1234.tmp.keep", ".target.json.abcd1234.tmp",
                                                          "target"]


def test_writes_into_a_crowded_folder_can_skip_the_listing(tmp_path):
    """`diyt predict` writes thousands of heat maps into one folder: those writes do not list it each time."""
    (tmp_path / ".map.png.abcd1234.tmp").write_text("left by a kill")
    with atomic_path(tmp_path / "map.png", clean=False) as tmp:
        tmp.write_text("map")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".map.png.abcd1234.tmp", "map.png"]
