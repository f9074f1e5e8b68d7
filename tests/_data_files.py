"""Copies of the real shared data files that a test may edit (the shared folder is read-only)."""

import shutil

ML100K_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.info")


def copy_ml100k(src, root):
    """The ML-100K files ``src`` holds, copied into ``root/ml-100k`` (returned)."""
    d = root / "ml-100k"
    d.mkdir(parents=True)
    for f in ML100K_FILES:
        shutil.copy(src / f, d / f)
    return d
