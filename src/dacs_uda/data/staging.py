"""Work that outlives a run: built in a temporary place, given its final name in one rename when complete.

Everything written in one go uses :func:`dacs_uda.utils.io.atomic_path`. Two things the ``data``
stage builds cannot: they are made over more than one run, and ``atomic_path`` deletes its
temporary when the block fails, which would throw away the progress a rerun must continue:

* a download goes to ``<name>.part`` (:func:`part_file`), which the next run resumes with an HTTP
  ``Range`` request, made conditional on the file being the one the first attempt got by the
  validator kept beside it (:func:`part_validator`, :mod:`dacs_uda.data.download`);
* a dataset is extracted archive by archive into ``.<root>.partial`` (:func:`staging_dir`), each
  finished archive recorded in ``.<root>.partial-done`` (:func:`done_dir`), so a rerun extracts only
  what is left (:mod:`dacs_uda.data.archives`).

Both end with :func:`promote`: only a complete, checked file or tree ever has the final name.
"""

from __future__ import annotations

import os
from pathlib import Path


def part_file(dest: Path) -> Path:
    """Where the download of ``dest`` collects its bytes until it is complete and verified."""
    return dest.with_name(dest.name + ".part")


def part_validator(dest: Path) -> Path:
    """The ETag or Last-Modified date of the file whose bytes :func:`part_file` holds."""
    return dest.with_name(dest.name + ".part-validator")


def staging_dir(root: Path) -> Path:
    """Where the dataset at ``root`` is extracted until its layout is complete."""
    return root.parent / f".{root.name}.partial"


def done_dir(root: Path) -> Path:
    """Where one marker per archive already extracted into :func:`staging_dir` is kept."""
    return root.parent / f".{root.name}.partial-done"


def promote(work: Path, final: Path) -> None:
    """Give the finished file or folder ``work`` the name ``final``, in one rename.

    ``final`` may be a file (replaced) or an empty folder (removed first); a folder with content
    is never replaced (``OSError``). ``work`` and ``final`` must be on the same file system: both
    helpers above put the work beside its final place.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir() and not final.is_symlink():
        final.rmdir()
    os.replace(work, final)
