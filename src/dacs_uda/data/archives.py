"""Extract dataset archives into a dataset root: safe member names, and atomic for the whole dataset.

* **Safe**: every member name is checked *before* anything is written: absolute paths, ``..``
  components, drive letters and symbolic links are refused (the whole archive is rejected), and every
  target is checked to lie inside the extraction folder. Zip archives are read by Python; RAR archives
  (SYNTHIA) need ``bsdtar``, ``unrar`` or ``7z`` on the PATH, and their member list is checked before
  the tool runs and the extracted tree again after it.
* **Atomic**: :func:`extract_dataset` extracts into ``.<root>.partial`` beside the dataset root, one
  archive at a time (a marker records each finished one, so a rerun resumes); the folder is renamed
  to the root only when every archive is in and the official layout is complete
  (:mod:`dacs_uda.data.staging`). A half-extracted dataset never counts as present.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Sequence
from pathlib import Path

from dacs_uda.data.manifest import missing_layout
from dacs_uda.data.sources import DOCS, Archive
from dacs_uda.data.staging import done_dir, promote, staging_dir
from dacs_uda.utils.io import write_text

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20
RAR_TOOLS = ("bsdtar", "unrar", "7z", "7zz")


class ArchiveError(RuntimeError):
    """An archive could not be extracted (the message says why and what to do)."""


class UnsafeArchive(ArchiveError):
    """An archive has members that would land outside the target folder."""


def member_target(name: str, strip: str = "", into: str = "") -> str:
    """Where an archive member goes, relative to the extraction folder ("" for the top folder itself).

    Raises:
        UnsafeArchive: The name is absolute, has a drive letter or a ``..`` component.
    """
    normal = name.replace("\\", "/")
    if normal.startswith("/") or re.match(r"^[A-Za-z]:", normal):
        raise UnsafeArchive(f"{name!r}: absolute path")
    parts = [p for p in normal.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{name!r}: parent-folder reference (..)")
    if strip and parts and parts[0] == strip:
        parts = parts[1:]
    if into and parts and parts[0] != into:
        parts = [into, *parts]
    return "/".join(parts)


def _inside(folder: Path, relative: str) -> Path:
    target = (folder / relative).resolve()
    if os.path.commonpath([target, folder.resolve()]) != str(folder.resolve()):
        raise UnsafeArchive(f"{relative!r} resolves outside {folder}")
    return target


def _is_zip_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _plan(names: list[tuple[str, bool]], archive: Path, strip: str, into: str) -> list[tuple[int, str]]:
    """(index, target) of every member to write; raise listing every unsafe member first."""
    plan, problems = [], []
    for index, (name, is_link) in enumerate(names):
        try:
            if is_link:
                raise UnsafeArchive(f"{name!r}: symbolic link")
            target = member_target(name, strip, into)
        except UnsafeArchive as err:
            problems.append(str(err))
            continue
        if target:
            plan.append((index, target))
    if problems:
        more = f" ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise UnsafeArchive(
            f"{archive.name}: refusing to extract anything, {len(problems)} unsafe members: "
            + "; ".join(problems[:10])
            + more
        )
    return plan


def _merge(src: Path, dest: Path) -> int:
    """Move every file of ``src`` into the same place under ``dest``; return how many."""
    moved = 0
    for path in sorted(src.rglob("*")):
        if path.is_file():
            promote(path, dest / path.relative_to(src))
            moved += 1
    shutil.rmtree(src)
    return moved


def extract_zip(archive: str | Path, dest: str | Path, strip: str = "", into: str = "") -> int:
    """Extract a zip archive into ``dest`` (merged with what is there); return the number of files.

    Every member is checked before anything is written; members are written into a private
    temporary folder inside ``dest`` and moved into place at the end.

    Raises:
        UnsafeArchive: A member would land outside ``dest`` (nothing is written).
        ArchiveError: The archive is incomplete or corrupt (CRC error, no central directory), or the
            disk is too small.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            plan = _plan([(i.filename, _is_zip_symlink(i)) for i in infos], archive, strip, into)
            need = sum(infos[i].file_size for i, _ in plan)
            dest.mkdir(parents=True, exist_ok=True)
            free = shutil.disk_usage(dest).free
            if need > free:
                raise ArchiveError(
                    f"{archive.name} needs {need / 1e9:.1f} GB, only {free / 1e9:.1f} GB free in {dest}"
                )
            work = dest / f".extract-{archive.name}"
            shutil.rmtree(work, ignore_errors=True)
            for index, target in plan:
                info = infos[index]
                path = _inside(work, target)
                if info.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(path, "wb") as out:
                    shutil.copyfileobj(src, out, COPY_CHUNK)
    except zipfile.BadZipFile as err:
        raise ArchiveError(
            f"{archive}: incomplete or corrupt zip ({err}); delete it and rerun to download it again"
        ) from None
    return _merge(work, dest)


def _rar_tool() -> str:
    for tool in RAR_TOOLS:
        if shutil.which(tool):
            return tool
    raise ArchiveError(
        "extracting a .rar archive needs one of "
        f"{', '.join(RAR_TOOLS)} on the PATH (e.g. `apt-get install libarchive-tools`); or extract it "
        "yourself and point params at the extracted folder"
    )


def _rar_names(tool: str, archive: Path) -> list[str]:
    commands = {
        "bsdtar": [tool, "-tf", str(archive)],
        "unrar": [tool, "lb", str(archive)],
        "7z": [tool, "l", "-ba", "-slt", str(archive)],
        "7zz": [tool, "l", "-ba", "-slt", str(archive)],
    }
    out = subprocess.run(commands[tool], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise ArchiveError(f"{tool} cannot list {archive.name}: {out.stderr.strip()[:500]}")
    lines = out.stdout.splitlines()
    if tool.startswith("7z"):
        return [line[len("Path = ") :] for line in lines if line.startswith("Path = ")]
    return [line for line in lines if line]


def extract_rar(archive: str | Path, dest: str | Path, strip: str = "", into: str = "") -> int:
    """Extract a RAR archive with an external tool, with the same checks as :func:`extract_zip`.

    The member list is checked before extraction; after it, the private folder is checked again
    (no symbolic links, nothing outside) and Windows-style ``a\\b`` names become folders.
    """
    archive, dest = Path(archive), Path(dest)
    tool = _rar_tool()
    _plan([(name, False) for name in _rar_names(tool, archive)], archive, strip, into)
    dest.mkdir(parents=True, exist_ok=True)
    work = dest / f".extract-{archive.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    commands = {
        "bsdtar": [tool, "-xf", str(archive.resolve()), "-C", str(work)],
        "unrar": [tool, "x", "-o+", "-y", str(archive.resolve()), str(work) + os.sep],
        "7z": [tool, "x", "-y", f"-o{work}", str(archive.resolve())],
        "7zz": [tool, "x", "-y", f"-o{work}", str(archive.resolve())],
    }
    out = subprocess.run(commands[tool], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise ArchiveError(f"{tool} failed on {archive.name}: {out.stderr.strip()[:500]}")
    staged = work.with_name(work.name + ".mapped")
    shutil.rmtree(staged, ignore_errors=True)
    for path in sorted(work.rglob("*")):
        if path.is_symlink():
            shutil.rmtree(work, ignore_errors=True)
            raise UnsafeArchive(f"{archive.name}: symbolic link {path.relative_to(work)} refused")
        if path.is_file():
            target = member_target(str(path.relative_to(work)), strip, into)
            promote(path, _inside(staged, target))
    shutil.rmtree(work)
    return _merge(staged, dest) if staged.exists() else 0


def extract(archive: Path, dest: Path, spec: Archive) -> int:
    """Extract ``archive`` (zip or rar, by its name) into ``dest`` following ``spec``."""
    if archive.suffix.lower() == ".rar":
        return extract_rar(archive, dest, spec.strip, spec.into)
    return extract_zip(archive, dest, spec.strip, spec.into)


def extract_dataset(fmt: str, root: Path, archives: Sequence[tuple[Archive, Path]], title: str) -> Path:
    """Extract every archive into ``.<root>.partial``, then rename that folder to ``root``.

    An archive already extracted by an earlier, interrupted run (its marker is there) is skipped.

    Args:
        fmt: Dataset format, whose official layout the result must have.
        root: The dataset root: must not exist, or be an empty folder.
        archives: (spec, verified archive file) of every archive of the dataset.
        title: The dataset's name in messages.

    Raises:
        ArchiveError: An archive cannot be extracted, or the result lacks the official layout.
    """
    # Not atomic_path: the staging folder must survive a failed run, so that the rerun extracts only
    # the archives not yet in (dacs_uda.data.staging); one rename at the end makes it the root.
    staging, markers = staging_dir(root), done_dir(root)
    markers.mkdir(parents=True, exist_ok=True)
    for spec, path in archives:
        marker = markers / spec.name
        if marker.exists():
            continue
        count = extract(path, staging, spec)
        write_text(marker, f"{count}\n")
        log.info("extracted %s (%d files)", spec.name, count)
    missing = missing_layout(fmt, staging)
    if missing:
        raise ArchiveError(
            f"after extracting every archive, {staging} lacks {', '.join(missing)}: the archives do not have "
            f"the expected {title} layout (see {DOCS})"
        )
    promote(staging, root)
    shutil.rmtree(markers)
    log.info("%s ready at %s", title, root)
    return root
