"""Finding the original folders below the folder a user points at: the newest of several wins."""
import os

from ace_step.loading.folder_search import find_root
from ace_step.loading.v1_layout import ORIGINAL_FOLDERS, _original_folders


def _original(root, mtime):
    for name in ORIGINAL_FOLDERS.values():
        (root / name).mkdir(parents=True)
        os.utime(root / name, (mtime, mtime))
    return root


def test_root_itself_and_nothing_found(tmp_path):
    root = _original(tmp_path / "ACE-Step-v1-3.5B", 1_000_000)
    assert find_root(root, _original_folders) == root
    (tmp_path / "empty" / "a" / "b").mkdir(parents=True)
    assert find_root(tmp_path / "empty", _original_folders) is None


def test_newest_snapshot_wins_whatever_the_names(tmp_path):
    repo = tmp_path / "models--ACE-Step--ACE-Step-v1-3.5B" / "snapshots"
    newer = _original(repo / "aaa", 2_000_000)
    _original(repo / "zzz", 1_000_000)
    assert find_root(tmp_path, _original_folders) == newer
    os.utime(repo / "zzz" / "umt5-base", (3_000_000, 3_000_000))  # one folder changed later: that snapshot
    assert find_root(tmp_path, _original_folders) == repo / "zzz"


def test_depth_is_bounded(tmp_path):
    deep = _original(tmp_path / "1" / "2" / "3" / "4" / "5", 1_000_000)
    assert find_root(tmp_path, _original_folders) is None
    assert find_root(tmp_path / "1", _original_folders) == deep
