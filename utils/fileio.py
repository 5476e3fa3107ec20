"""Atomic file writing: a killed run never leaves a half-written output behind.

`atomic_write` writes each file as `.{name}.{random}.tmp/{name}`: inside a hidden folder next to
the target, under the target's own name, then renames it into place and removes the folder. The
writer sees the real name and suffix, so every writer that picks its format from the suffix
keeps working without being told the format (`cv2.imwrite` chooses its encoder from it,
`np.save` appends `.npy` to any other name, `torch.save`, PIL and matplotlib are indifferent),
while nothing in the target's folder is ever named like a finished file: a `*.png` glob of the
folder never meets a file that is still being written, or one orphaned by a SIGKILL.
`remove_stale_temp_files` removes such orphans (and only names of that pattern).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TEMP_SUFFIX = ".tmp"
# `.{name}.{random}.tmp`: atomic_write's folders (random: tempfile's 8 characters); older
# preprocess_deepfashion runs left files named `.{name}.{pid}.tmp`, which match as well
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]+\.tmp$")


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp_path)`, then rename `tmp_path` to `path`; returns `path`.

    `tmp_path` has the same file name as `path` (suffix included: writers that infer the format
    from it need nothing else) but lies in a new hidden folder `.{name}.{random}.tmp` next to
    `path`, which is removed afterwards, also when `write` raises. The file gets the usual
    permissions of a new file; parent folders of `path` are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    tmp = folder / path.name
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


def _newest_mtime(entry: Path) -> float:
    """Latest modification time of a temporary file, or of a folder and the file inside it."""
    times = [entry.lstat().st_mtime]
    if entry.is_dir() and not entry.is_symlink():
        times += [child.lstat().st_mtime for child in entry.iterdir()]
    return max(times)


def remove_stale_temp_files(
    folder: str | os.PathLike,
    pattern: str = "*",
    *,
    recursive: bool = False,
    min_age_s: float = 0.0,
) -> list[Path]:
    """Remove the temporaries of `atomic_write` that a killed process left in `folder`.

    Only entries named `.{name}.{random}.tmp` whose `name` matches the glob `pattern` (e.g.
    `"*.png"`; `"*"`: every name) are removed; any other file is left alone. `recursive` also
    searches the sub-folders. With `min_age_s` = 0 every such temporary goes: call it before a
    run writes, when no other process writes into `folder`; where other processes may be
    writing at the same time (shards of one job sharing an output folder), pass the age in
    seconds after which a temporary cannot belong to a live write. A missing `folder` is fine.

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(f".*{TEMP_SUFFIX}") if recursive else folder.glob(f".*{TEMP_SUFFIX}")
    cutoff = time.time() - min_age_s
    removed = []
    for entry in sorted(found):
        match = _TEMP_NAME.match(entry.name)
        if match is None or not fnmatch.fnmatchcase(match["name"], pattern):
            continue
        try:
            if min_age_s > 0 and _newest_mtime(entry) > cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # its writer finished (or another cleaner got it) meanwhile
            continue
        removed.append(entry)
    return removed
