"""Extract dataset archives into a dataset root: safe members, enough disk, atomic for the whole dataset.

* **Safe**: every member is listed with its type *before* anything is written: absolute paths, ``..``
  components, drive letters, symbolic and hard links, devices, pipes and sockets are refused (the whole
  archive is rejected), and every target is checked to lie inside the extraction folder. Zip archives
  are read by Python; RAR (SYNTHIA) and 7z archives need ``bsdtar`` (Debian's ``libarchive-tools``) or
  7-Zip (``7zz``/``7z``) on the PATH: the tool's typed listing is checked before it extracts anything,
  and the extracted tree again after it.
* **Enough disk**: the unpacked size of the listed members is compared with the free space first.
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
from dataclasses import dataclass
from pathlib import Path

from dacs_uda.data.manifest import missing_layout
from dacs_uda.data.sources import DOCS, Archive
from dacs_uda.data.staging import done_dir, promote, staging_dir
from dacs_uda.utils.io import write_text

log = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20
# External extractors, in order of preference: bsdtar reads RAR and 7z; Debian's 7-Zip reads 7z only.
ARCHIVE_TOOLS = ("bsdtar", "7zz", "7z")
TOOL_SUFFIXES = (".rar", ".7z")
FILE, FOLDER = "file", "folder"
# The first character of an ls-style mode string, as bsdtar and 7-Zip list members.
MODE_KINDS = {
    "-": FILE,
    "d": FOLDER,
    "l": "symbolic link",
    "h": "hard link",
    "c": "character device",
    "b": "block device",
    "p": "named pipe",
    "s": "socket",
}
HARD_LINK = MODE_KINDS["h"]
# Fixed month names and UTF-8 member names in the tools' listings, whatever the user's locale.
TOOL_ENV = {"LC_ALL": "C.UTF-8"}


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


@dataclass(frozen=True)
class Member:
    """An archive member as its listing shows it."""

    name: str
    kind: str  # FILE, FOLDER, or one of the refused kinds of MODE_KINDS
    size: int  # unpacked bytes (0 for anything but a file)


def _inside(folder: Path, relative: str) -> Path:
    target = (folder / relative).resolve()
    if os.path.commonpath([target, folder.resolve()]) != str(folder.resolve()):
        raise UnsafeArchive(f"{relative!r} resolves outside {folder}")
    return target


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16  # Unix mode bits, when the archive was made on Unix
    if stat.S_IFMT(mode):
        return MODE_KINDS.get(stat.filemode(mode)[0], "special file")
    return FOLDER if info.is_dir() else FILE


def _plan(members: Sequence[Member], archive: Path, strip: str, into: str) -> list[tuple[int, str]]:
    """(index, target) of every member to write; raise listing every unsafe member first."""
    plan, problems = [], []
    for index, member in enumerate(members):
        try:
            if member.kind not in (FILE, FOLDER):
                raise UnsafeArchive(f"{member.name!r}: {member.kind}")
            target = member_target(member.name, strip, into)
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


def _check_space(archive: Path, members: Sequence[Member], plan: list[tuple[int, str]], dest: Path) -> None:
    """Raise before extracting when the unpacked members do not fit on the disk that holds ``dest``."""
    need = sum(members[index].size for index, _ in plan)
    dest.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest).free
    if need > free:
        raise ArchiveError(
            f"{archive.name} needs {need / 1e9:.1f} GB, only {free / 1e9:.1f} GB free in {dest}: free some "
            "space (or move data.downloads and the dataset root to a larger disk) and rerun"
        )


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
            members = [Member(i.filename, _zip_kind(i), i.file_size) for i in infos]
            plan = _plan(members, archive, strip, into)
            _check_space(archive, members, plan, dest)
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


def _archive_tool(archive: Path) -> str:
    for tool in ARCHIVE_TOOLS:
        if shutil.which(tool):
            return tool
    raise ArchiveError(
        f"extracting {archive.name} needs one of {', '.join(ARCHIVE_TOOLS)} on the PATH (e.g. `apt-get "
        "install libarchive-tools`); or extract it yourself and point params at the extracted folder"
    )


def _run_tool(command: list[str], archive: Path) -> str:
    out = subprocess.run(
        command,
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",
        env={**os.environ, **TOOL_ENV},
        check=False,
    )
    if out.returncode != 0:
        said = "; ".join(line.strip() for line in out.stderr.splitlines() if line.strip())
        raise ArchiveError(
            f"{command[0]} cannot read {archive.name}: {said[:500]}; if the archive is "
            "incomplete or corrupt, delete it and rerun to download it again"
        )
    return out.stdout


def _bsdtar_member(name: str, line: str, archive: Path) -> Member:
    """A member from its ``bsdtar -tf`` name and ``bsdtar -tvf`` line (ls-style, C locale)."""
    fields = line.split(None, 8)  # mode, links, owner, group, size, month, day, time or year, name...
    shown = fields[8] if len(fields) == 9 else ""
    if not fields or fields[0][0] not in MODE_KINDS or not shown.startswith(name):
        raise ArchiveError(f"{archive.name}: cannot read bsdtar's listing line {line!r}")
    kind = MODE_KINDS[fields[0][0]]
    # A hard link is listed with its target's mode and "NAME link to TARGET": only the suffix tells.
    if shown[len(name) :].startswith(" link to "):
        kind = HARD_LINK
    return Member(name, kind, int(fields[4]) if kind == FILE else 0)


def _bsdtar_members(tool: str, archive: Path) -> list[Member]:
    names = _run_tool([tool, "-tf", str(archive)], archive).splitlines()
    lines = _run_tool([tool, "-tvf", str(archive)], archive).splitlines()
    if len(names) != len(lines):
        raise ArchiveError(f"{archive.name}: bsdtar listed {len(names)} names but {len(lines)} members")
    return [_bsdtar_member(name, line, archive) for name, line in zip(names, lines, strict=True)]


def _7z_kind(fields: dict[str, str]) -> str:
    if fields.get("Symbolic Link"):
        return MODE_KINDS["l"]
    if fields.get("Hard Link"):
        return HARD_LINK
    # "A -rw-r--r--": Windows attributes, then the Unix mode when the archive was made on Unix.
    attributes = fields.get("Attributes", "").split()
    mode = attributes[-1] if attributes else ""
    if len(mode) == 10 and mode[0] in MODE_KINDS:
        return MODE_KINDS[mode[0]]
    windows_folder = bool(attributes) and "D" in attributes[0]
    return FOLDER if fields.get("Folder") == "+" or windows_folder else FILE


def _7z_members(tool: str, archive: Path) -> list[Member]:
    members = []
    for block in _run_tool([tool, "l", "-ba", "-slt", str(archive)], archive).split("\n\n"):
        fields = dict(line.split(" = ", 1) for line in block.splitlines() if " = " in line)
        if "Path" in fields:
            kind = _7z_kind(fields)
            members.append(Member(fields["Path"], kind, int(fields.get("Size") or 0) if kind == FILE else 0))
    return members


def _extract_command(tool: str, archive: Path, work: Path) -> list[str]:
    if tool == "bsdtar":
        return [tool, "-xf", str(archive.resolve()), "-C", str(work), "--no-same-owner"]
    return [tool, "x", "-y", f"-o{work}", str(archive.resolve())]


def _refuse_special_files(work: Path, archive: Path) -> None:
    """Second line of defence: the extracted tree holds plain files and folders only."""
    for path in sorted(work.rglob("*")):
        info = path.lstat()
        kind = MODE_KINDS.get(stat.filemode(info.st_mode)[0], "special file")
        if kind == FILE and info.st_nlink > 1:
            kind = HARD_LINK
        if kind not in (FILE, FOLDER):
            shutil.rmtree(work, ignore_errors=True)
            raise UnsafeArchive(f"{archive.name}: {kind} {path.relative_to(work)} refused")


def extract_with_tool(archive: str | Path, dest: str | Path, strip: str = "", into: str = "") -> int:
    """Extract a RAR or 7z archive with an external tool, with the same checks as :func:`extract_zip`.

    The typed member list is checked (and the disk space with it) before the tool extracts anything;
    after it, the private folder is checked again and Windows-style ``a\\b`` names become folders.

    Raises:
        UnsafeArchive: A member is unsafe (nothing is written).
        ArchiveError: No tool, a corrupt archive or too small a disk.
    """
    archive, dest = Path(archive), Path(dest)
    tool = _archive_tool(archive)
    members = _bsdtar_members(tool, archive) if tool == "bsdtar" else _7z_members(tool, archive)
    _check_space(archive, members, _plan(members, archive, strip, into), dest)
    work = dest / f".extract-{archive.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        _run_tool(_extract_command(tool, archive, work), archive)
    except ArchiveError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _refuse_special_files(work, archive)
    staged = work.with_name(work.name + ".mapped")
    shutil.rmtree(staged, ignore_errors=True)
    for path in sorted(work.rglob("*")):
        if path.is_file():
            target = member_target(str(path.relative_to(work)), strip, into)
            promote(path, _inside(staged, target))
    shutil.rmtree(work)
    return _merge(staged, dest) if staged.exists() else 0


def extract(archive: Path, dest: Path, spec: Archive) -> int:
    """Extract ``archive`` (zip, or RAR/7z through a tool: by its name) into ``dest`` following ``spec``."""
    if archive.suffix.lower() in TOOL_SUFFIXES:
        return extract_with_tool(archive, dest, spec.strip, spec.into)
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
