"""RAR and 7z archives through the real tools (bsdtar, 7-Zip): typed member lists checked before
anything is extracted, the disk-space check, and a SYNTHIA archive extracted end to end.

No RAR writer is free software, so the RAR archives are written by :func:`rar5`, below, from the
published RAR 5.0 format description (rarlab.com "RAR 5.0 archive format"): stored members (no
compression), Unix host, a file-system-redirection record for links. They are real RAR 5 archives:
bsdtar (libarchive) reads and extracts them, and its listing is what these tests check. The 7z
archives are written by 7-Zip and by bsdtar itself.

The tools come from Debian (``libarchive-tools``, ``7zip``); ``.ci/run`` installs them. Without them
the tests are skipped, except under CI (``CI`` set), where a missing tool fails them.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest

from dacs_uda.data import archives
from dacs_uda.data.archives import ArchiveError, UnsafeArchive, extract_dataset, extract_with_tool
from dacs_uda.data.manifest import missing_layout
from dacs_uda.data.sources import Archive
from tests.data import fixtures


def needs(tool: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        shutil.which(tool) is None and not os.environ.get("CI"),
        reason=f"{tool} is not installed (.ci/run installs it: apt-get install libarchive-tools 7zip)",
    )


@pytest.fixture
def only(monkeypatch: pytest.MonkeyPatch):
    """Make the extractor use just the named tool."""

    def use(tool: str) -> None:
        monkeypatch.setattr(archives, "ARCHIVE_TOOLS", (tool,))

    return use


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every command the extractor runs (the real tools still run): a spy, not a stand-in."""
    seen: list[list[str]] = []
    real = subprocess.run

    def spy(command, *args, **kwargs):
        seen.append(list(command))
        return real(command, *args, **kwargs)

    monkeypatch.setattr(archives.subprocess, "run", spy)
    return seen


# --- a RAR 5 writer (stored members), after the RAR 5.0 archive format description -------------------

RAR5_SIGNATURE = b"Rar!\x1a\x07\x01\x00"
MAIN_HEADER, FILE_HEADER, END_HEADER = 1, 2, 5  # header types
HAS_EXTRA, HAS_DATA = 0x1, 0x2  # header flags
IS_DIRECTORY, HAS_CRC = 0x1, 0x4  # file flags
UNIX_HOST, REDIRECTION_RECORD = 1, 5
UNIX_SYMLINK, HARD_LINK = 1, 4  # redirection types


def vint(value: int) -> bytes:
    """RAR 5's variable-length integer: 7 bits a byte, low bits first, high bit = more follows."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def rar5_block(kind: int, fields: bytes, extra: bytes = b"", data: bytes | None = None) -> bytes:
    flags = (HAS_EXTRA if extra else 0) | (HAS_DATA if data is not None else 0)
    body = vint(kind) + vint(flags)
    body += (vint(len(extra)) if extra else b"") + (vint(len(data)) if data is not None else b"")
    header = vint(len(body + fields + extra)) + body + fields + extra
    return struct.pack("<I", zlib.crc32(header)) + header + (data or b"")


def rar5_member(
    name: str, data: bytes = b"", mode: int = 0o100644, link: tuple[int, str] | None = None
) -> bytes:
    """A stored member; ``mode`` is the Unix st_mode (its type bits make folders, devices, pipes)."""
    extra = b""
    if link is not None:
        kind, target = link
        record = (
            vint(REDIRECTION_RECORD) + vint(kind) + vint(0) + vint(len(target.encode())) + target.encode()
        )
        extra = vint(len(record)) + record
    file_flags = HAS_CRC | (IS_DIRECTORY if mode >> 12 == 0o04 else 0)
    encoded = name.encode()
    fields = vint(file_flags) + vint(len(data)) + vint(mode) + struct.pack("<I", zlib.crc32(data))
    fields += vint(0) + vint(UNIX_HOST) + vint(len(encoded)) + encoded  # compression 0: stored
    return rar5_block(FILE_HEADER, fields, extra, data)


def rar5(*members: bytes) -> bytes:
    return (
        RAR5_SIGNATURE
        + rar5_block(MAIN_HEADER, vint(0))
        + b"".join(members)
        + rar5_block(END_HEADER, vint(0))
    )


UNSAFE_RAR_MEMBERS = {
    "symbolic link": rar5_member("A/link", mode=0o120777, link=(UNIX_SYMLINK, "/etc/passwd")),
    "hard link": rar5_member("A/hard", link=(HARD_LINK, "A/x.txt")),
    "character device": rar5_member("A/dev", mode=0o020644),
    "block device": rar5_member("A/disk", mode=0o060644),
    "named pipe": rar5_member("A/fifo", mode=0o010644),
    "parent-folder reference (..)": rar5_member("../up.txt", b"x"),
    "absolute path": rar5_member("/abs.txt", b"x"),
}
UNSAFE_NAMES = {
    "symbolic link": "A/link",
    "hard link": "A/hard",
    "character device": "A/dev",
    "block device": "A/disk",
    "named pipe": "A/fifo",
    "parent-folder reference (..)": "../up.txt",
    "absolute path": "/abs.txt",
}


# --- RAR ----------------------------------------------------------------------------------------------


@needs("bsdtar")
def test_synthia_rar_is_extracted_by_bsdtar_into_the_official_layout(tmp_path: Path, only) -> None:
    only("bsdtar")
    tree = fixtures.synthia_tree(tmp_path / "syn", count=2)
    files = sorted(p for p in tree.rglob("*.png"))
    archive = tmp_path / "SYNTHIA_RAND_CITYSCAPES.rar"
    archive.write_bytes(
        rar5(
            rar5_member("RAND_CITYSCAPES/GT", mode=0o040755),
            *(rar5_member(f"RAND_CITYSCAPES/{p.relative_to(tree)}", p.read_bytes()) for p in files),
        )
    )
    spec = Archive(archive.name, "", strip="RAND_CITYSCAPES")
    root = extract_dataset("synthia", tmp_path / "data" / "synthia", [(spec, archive)], "SYNTHIA")
    assert missing_layout("synthia", root) == []
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        str(p.relative_to(tree)) for p in files
    ]
    assert all((root / p.relative_to(tree)).read_bytes() == p.read_bytes() for p in files)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["synthia"]  # no staging left


@needs("bsdtar")
def test_every_unsafe_rar_member_is_named_and_the_tool_never_extracts(
    tmp_path: Path, only, commands: list[list[str]]
) -> None:
    only("bsdtar")
    archive = tmp_path / "evil.rar"
    archive.write_bytes(rar5(rar5_member("A/x.txt", b"hello\n"), *UNSAFE_RAR_MEMBERS.values()))
    dest = tmp_path / "out"
    with pytest.raises(UnsafeArchive) as err:
        extract_with_tool(archive, dest)
    problems = "; ".join(f"{UNSAFE_NAMES[kind]!r}: {kind}" for kind in UNSAFE_RAR_MEMBERS)
    assert str(err.value) == f"evil.rar: refusing to extract anything, 7 unsafe members: {problems}"
    assert [c[1] for c in commands] == ["-tf", "-tvf"]  # listed twice, never extracted
    assert not dest.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.rar"]


@needs("bsdtar")
@pytest.mark.parametrize("kind", list(UNSAFE_RAR_MEMBERS))
def test_one_unsafe_rar_member_rejects_the_whole_archive(tmp_path: Path, only, kind: str) -> None:
    only("bsdtar")
    archive = tmp_path / "one.rar"
    archive.write_bytes(rar5(rar5_member("A/x.txt", b"hello\n"), UNSAFE_RAR_MEMBERS[kind]))
    with pytest.raises(UnsafeArchive) as err:
        extract_with_tool(archive, tmp_path / "out")
    assert (
        str(err.value)
        == f"one.rar: refusing to extract anything, 1 unsafe members: {UNSAFE_NAMES[kind]!r}: {kind}"
    )
    assert not (tmp_path / "out").exists()


@needs("bsdtar")
def test_a_rar_larger_than_the_free_space_is_refused_before_extraction(
    tmp_path: Path, only, commands: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    only("bsdtar")
    archive = tmp_path / "big.rar"
    archive.write_bytes(rar5(rar5_member("A/x.bin", b"x" * 3000), rar5_member("A/y.bin", b"y" * 2000)))
    dest = tmp_path / "out"
    real = shutil.disk_usage
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda p: real(p)._replace(free=4999))
    with pytest.raises(
        ArchiveError, match=r"^big.rar needs 0.0 GB, only 0.0 GB free in .*out: free some space"
    ):
        extract_with_tool(archive, dest)
    assert [c[1] for c in commands] == ["-tf", "-tvf"] and list(dest.iterdir()) == []
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda p: real(p)._replace(free=5000))
    assert extract_with_tool(archive, dest) == 2  # exactly enough room is enough


@needs("bsdtar")
def test_a_truncated_rar_says_to_download_it_again(tmp_path: Path, only) -> None:
    only("bsdtar")
    data = rar5(*(rar5_member(f"A/{i}.bin", os.urandom(500)) for i in range(4)))
    archive = tmp_path / "cut.rar"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match=r"^bsdtar cannot read cut.rar: .*delete it and rerun"):
        extract_with_tool(archive, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else True


def test_without_a_tool_the_message_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(archives.shutil, "which", lambda name: None)
    with pytest.raises(
        ArchiveError, match=r"x.rar needs one of bsdtar, 7zz, 7z on the PATH.*libarchive-tools"
    ):
        archives.extract(tmp_path / "x.rar", tmp_path / "out", Archive("x.rar", ""))


# --- 7z -----------------------------------------------------------------------------------------------

SEVEN_ZIP_READERS = [pytest.param("bsdtar", marks=needs("bsdtar")), pytest.param("7zz", marks=needs("7zz"))]


def seven_zip(
    tmp_path: Path, name: str, files: dict[str, bytes], links: dict[str, str] | None = None
) -> Path:
    """A 7z archive written by 7-Zip from a real tree (``-snl``: symbolic links stored as links)."""
    tree = tmp_path / f"{name}-tree"
    for member, data in files.items():
        (tree / member).parent.mkdir(parents=True, exist_ok=True)
        (tree / member).write_bytes(data)
    for member, target in (links or {}).items():
        (tree / member).parent.mkdir(parents=True, exist_ok=True)
        (tree / member).symlink_to(target)
    archive = tmp_path / f"{name}.7z"
    subprocess.run(["7zz", "a", "-snl", str(archive), "."], cwd=tree, check=True, capture_output=True)
    return archive


@needs("7zz")
@pytest.mark.parametrize("tool", SEVEN_ZIP_READERS)
def test_a_7z_archive_is_extracted(tmp_path: Path, only, tool: str) -> None:
    only(tool)
    files = {"images/00001.png": b"one", "labels/00001.png": b"two" * 100}
    archive = seven_zip(tmp_path, "ok", files)
    assert archives.extract(archive, tmp_path / "out", Archive(archive.name, "")) == 2
    assert {
        str(p.relative_to(tmp_path / "out")): p.read_bytes()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    } == files


@needs("7zz")
@pytest.mark.parametrize("tool", SEVEN_ZIP_READERS)
def test_a_7z_symlink_is_refused_before_extraction(tmp_path: Path, only, commands, tool: str) -> None:
    only(tool)
    archive = seven_zip(tmp_path, "evil", {"images/00001.png": b"one"}, {"images/passwd.png": "/etc/passwd"})
    commands.clear()  # from here on, only what the extractor runs
    with pytest.raises(UnsafeArchive) as err:
        extract_with_tool(archive, tmp_path / "out")
    assert (
        str(err.value)
        == "evil.7z: refusing to extract anything, 1 unsafe members: 'images/passwd.png': symbolic link"
    )
    assert all(c[1] in ("-tf", "-tvf", "l") for c in commands) and not (tmp_path / "out").exists()


@needs("bsdtar")
@pytest.mark.parametrize("tool", SEVEN_ZIP_READERS)
def test_a_7z_member_outside_the_root_is_refused(tmp_path: Path, only, tool: str) -> None:
    only(tool)
    (tmp_path / "x.txt").write_bytes(b"x")
    # bsdtar writes any name from an mtree description; 7-Zip itself would not store "..".
    (tmp_path / "spec.mtree").write_text(
        "#mtree\n"
        "images/ok.png type=file mode=0644 contents=x.txt\n"
        "../up.png type=file mode=0644 contents=x.txt\n"
    )
    archive = tmp_path / "up.7z"
    subprocess.run(
        ["bsdtar", "-cf", str(archive), "--format", "7zip", "@spec.mtree"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    with pytest.raises(UnsafeArchive, match=r"1 unsafe members: '../up.png': parent-folder reference"):
        extract_with_tool(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "up.png").exists()


# --- the second line of defence -----------------------------------------------------------------------


def test_a_link_in_the_extracted_tree_is_refused_and_the_tree_removed(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "images").mkdir(parents=True)
    (work / "images" / "a.png").write_bytes(b"a")
    (work / "images" / "b.png").hardlink_to(work / "images" / "a.png")
    with pytest.raises(UnsafeArchive, match=r"^x.rar: hard link images/a.png refused$"):
        archives._refuse_special_files(work, Path("x.rar"))
    assert not work.exists()


@needs("bsdtar")
def test_windows_style_rar_names_become_folders(tmp_path: Path, only) -> None:
    only("bsdtar")
    archive = tmp_path / "win.rar"
    archive.write_bytes(rar5(rar5_member("RAND_CITYSCAPES\\GT\\LABELS\\0000000.png", b"label")))
    assert extract_with_tool(archive, tmp_path / "out", strip="RAND_CITYSCAPES") == 1
    assert (tmp_path / "out" / "GT" / "LABELS" / "0000000.png").read_bytes() == b"label"


# --- zip (read by Python): the same typed check and disk-space check ------------------------------------


def zip_with_modes(members: dict[str, int]) -> bytes:
    """A zip whose members carry these Unix modes (as Info-ZIP stores them, in the high 16 bits)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, mode in members.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, b"" if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) else b"data")
    return buffer.getvalue()


def test_zip_devices_and_pipes_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "dev.zip"
    archive.write_bytes(zip_with_modes({"a.png": 0o100644, "dev": 0o020644, "fifo": 0o010644}))
    with pytest.raises(UnsafeArchive) as err:
        archives.extract_zip(archive, tmp_path / "out")
    assert str(err.value) == (
        "dev.zip: refusing to extract anything, 2 unsafe members: 'dev': character device; 'fifo': named pipe"
    )
    assert not any((tmp_path / "out").rglob("*"))


def test_a_zip_larger_than_the_free_space_is_refused(tmp_path: Path, monkeypatch) -> None:
    archive = tmp_path / "big.zip"
    archive.write_bytes(fixtures.zip_bytes({"a.png": b"a" * 700, "b.png": b"b" * 300}))
    real = shutil.disk_usage
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda p: real(p)._replace(free=999))
    with pytest.raises(ArchiveError, match=r"^big.zip needs 0.0 GB, only 0.0 GB free in "):
        archives.extract_zip(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
