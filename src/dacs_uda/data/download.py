"""Download, verify and extract the real datasets: resumable, checked, safe and atomic.

* **Resumable**: bytes go to ``<name>.part``; an interrupted or dropped transfer is continued with an
  HTTP ``Range`` request (a server that ignores it makes the download start over, never corrupt it).
  The archive gets its final name only when it is complete and its checksum matched.
* **Verified**: SHA-256 (and MD5) of every archive are computed before it is used and compared with
  the known checksums: the provider's (:mod:`dacs_uda.data.sources`, or the Cityscapes site's MD5
  fetched at download time) and the user's pins (``data.checksums``). With none known, the log says
  the archive is UNVERIFIED and gives its SHA-256 to pin; ``SHA256SUMS`` beside the archives lists them.
* **Safe**: every member name is checked *before* anything is written: absolute paths, ``..``
  components, drive letters and symbolic links are refused (the whole archive is rejected), and every
  target is checked to lie inside the staging folder.
* **Atomic**: archives are extracted into ``.<root>.partial`` beside the dataset root, one archive
  at a time (a marker records each finished one, so a rerun resumes); the folder is renamed to the
  root only when every archive is in and the official layout is complete. A half-extracted dataset
  never counts as present, and an existing root is never overwritten.
* **Credentials** (Cityscapes) come from ``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD`` only; they
  are sent in the login form's body and never logged, put in URLs, params, lock files or metrics.
"""

from __future__ import annotations

import hashlib
import http.client
import http.cookiejar
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dacs_uda.data.manifest import missing_layout
from dacs_uda.data.sources import CREDENTIAL_ENV, SOURCES, Archive, Source

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "dacs-uda-downloader/1"
DOCS = "docs/datasets.md"
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class DownloadError(RuntimeError):
    """A download or extraction could not be completed (the message says why and what to do)."""


class ChecksumMismatch(DownloadError):
    """An archive's checksum differs from the known one."""


class UnsafeArchive(DownloadError):
    """An archive has members that would land outside the target folder."""


class CredentialsMissing(DownloadError):
    """An account-protected dataset was asked for without credentials in the environment."""


# --- checksums -------------------------------------------------------------------------------------


def read_pins(path: str | Path | None) -> dict[str, dict[str, str]]:
    """Checksums pinned by the user: file name -> {"sha256" or "md5": hex}.

    The file uses the ``sha256sum`` / ``md5sum`` output format (``<hex>  <name>``, ``*`` before a
    binary-mode name allowed, ``#`` comments); the algorithm follows from the length of the hex.

    Raises:
        DownloadError: The file is missing or a line cannot be read.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"data.checksums: {path} not found (set it to null to use no pinned checksums)")
    pins: dict[str, dict[str, str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        algorithm = {32: "md5", 64: "sha256"}.get(len(parts[0]))
        if len(parts) != 2 or algorithm is None or not _HEX.match(parts[0]):
            raise DownloadError(f"{path}:{number}: expected '<md5 or sha256 hex>  <file name>', got {line!r}")
        pins.setdefault(Path(parts[1].lstrip("*")).name, {})[algorithm] = parts[0].lower()
    return pins


def file_digests(path: str | Path) -> dict[str, str]:
    """SHA-256 and MD5 of a file, in one pass."""
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            sha256.update(block)
            md5.update(block)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def verify(
    path: str | Path, known: Mapping[str, str | None], name: str | None = None
) -> tuple[dict[str, str], bool]:
    """Check ``path`` against every known checksum.

    Args:
        path: The file.
        known: "sha256"/"md5" -> expected hex (None or missing: unknown).
        name: The file's name in messages (default: its own).

    Returns:
        The file's digests, and whether at least one known checksum was checked (False: unverified).

    Raises:
        ChecksumMismatch: A known checksum differs.
    """
    digests = file_digests(path)
    checked = False
    for algorithm, expected in known.items():
        if not expected:
            continue
        checked = True
        if digests[algorithm] != expected.lower():
            raise ChecksumMismatch(
                f"{name or Path(path).name}: {algorithm} is {digests[algorithm]}, expected {expected.lower()}"
            )
    return digests, checked


def record_digest(folder: Path, name: str, sha256: str) -> None:
    """Add or update ``name`` in ``folder/SHA256SUMS`` (a file users can pin from)."""
    sums = folder / "SHA256SUMS"
    old = sums.read_text().splitlines() if sums.is_file() else []
    lines = [line for line in old if not line.endswith(f"  {name}")]
    lines.append(f"{sha256}  {name}")
    tmp = sums.with_name(f".{sums.name}.tmp")
    tmp.write_text("\n".join(sorted(lines, key=lambda x: x.split("  ", 1)[-1])) + "\n")
    os.replace(tmp, sums)


# --- HTTP ------------------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Report redirects instead of following them (the Cityscapes login answers 302 on success)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib hook
        return None


def _offline(err: BaseException) -> bool:
    reason = getattr(err, "reason", err)
    return isinstance(reason, socket.gaierror | ConnectionRefusedError)


def _content_range_total(value: str | None) -> int | None:
    match = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", value or "")
    return int(match.group(1)) if match else None


def fetch(
    url: str,
    dest: str | Path,
    *,
    opener: urllib.request.OpenerDirector | None = None,
    known: Mapping[str, str | None] | None = None,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
    on_progress: Callable[[int, int | None], None] | None = None,
) -> dict[str, str]:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming what is already there.

    Args:
        url: HTTP(S) URL.
        dest: Final file; it appears only when complete and verified.
        opener: urllib opener (cookies for Cityscapes); a plain one by default.
        known: Expected checksums ("sha256"/"md5" -> hex or None).
        retries: Further attempts after a dropped connection or a server error (each resumes).
        backoff: Seconds before the first retry, doubled each time.
        timeout: Socket timeout per read.
        on_progress: Called with (bytes so far, total or None) after each chunk.

    Returns:
        The digests of the downloaded file.

    Raises:
        DownloadError: No network, HTTP error, HTML page instead of a file, or still incomplete after
            every retry (the ``.part`` file is kept for the next run to resume).
        ChecksumMismatch: The complete file does not match ``known`` (the ``.part`` file is deleted).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    opener = opener or urllib.request.build_opener()
    total: int | None = None
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            with opener.open(request, timeout=timeout) as response:
                total = _receive(response, part, offset, total, on_progress)
            break
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:  # nothing left to send: complete if the sizes agree
                remote = _content_range_total(err.headers.get("Content-Range"))
                if remote == offset:
                    total = offset
                    break
                part.unlink()  # the partial file does not match the remote one: start over
                problem: BaseException = err
            elif err.code in (401, 403):
                raise DownloadError(f"{url}: access denied (HTTP {err.code}); check the account") from None
            elif err.code == 404:
                raise DownloadError(f"{url}: not found (HTTP 404); has the file moved? See {DOCS}") from None
            else:
                problem = err
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            if _offline(err):
                raise DownloadError(
                    f"cannot reach {urllib.parse.urlsplit(url).netloc} ({getattr(err, 'reason', err)}): "
                    "no network? Download the archive elsewhere into "
                    f"{dest.parent}/ or point params at an extracted copy (see {DOCS})"
                ) from None
            problem = err
        if attempt == retries:
            kept = part.stat().st_size if part.exists() else 0
            raise DownloadError(
                f"{url}: {problem}; giving up after {retries + 1} attempts. {kept} bytes are kept in "
                f"{part}: rerun to resume"
            ) from None
        wait = backoff * 2**attempt
        log.warning("download of %s interrupted (%s); resuming in %.0f s", dest.name, problem, wait)
        time.sleep(wait)
    try:
        digests, _ = verify(part, known or {}, dest.name)
    except ChecksumMismatch as err:
        part.unlink()
        raise ChecksumMismatch(f"{err}; the download was deleted, rerun to download it again") from None
    os.replace(part, dest)
    return digests


def _receive(
    response: http.client.HTTPResponse,
    part: Path,
    offset: int,
    total: int | None,
    on_progress: Callable[[int, int | None], None] | None,
) -> int | None:
    """Write one response body into ``part``; return the total size; raise if it ends early."""
    content_type = response.headers.get("Content-Type", "")
    if content_type.startswith("text/html"):
        raise DownloadError(
            f"{response.geturl()} sent an HTML page instead of the file (login expired or refused?)"
        )
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if not match or int(match.group(1)) != offset:
            at = match.group(1) if match else "?"
            raise http.client.HTTPException(f"server resumed at byte {at}, not {offset}")
        total = _content_range_total(response.headers.get("Content-Range")) or total
        mode = "ab"
    else:  # 200: the whole file (a server that ignores Range restarts it)
        offset = 0
        total = int(length) if length is not None else total
        mode = "wb"
    written = offset
    with open(part, mode) as f:
        while block := response.read(CHUNK):
            f.write(block)
            written += len(block)
            if on_progress:
                on_progress(written, total)
    if total is not None and written < total:
        raise http.client.IncompleteRead(b"", total - written)
    return total


# --- Cityscapes account ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """An account's credentials; ``repr`` never shows the password."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"

    __str__ = __repr__


def credentials_from_env(env: Mapping[str, str] | None = None) -> Credentials | None:
    """Cityscapes credentials from ``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD`` (None if unset)."""
    env = os.environ if env is None else env
    user, password = (env.get(name, "") for name in CREDENTIAL_ENV)
    return Credentials(user, password) if user and password else None


def missing_credentials_message(source: Source, archives_dir: Path, root: str, key: str) -> str:
    """What to do when an account-protected dataset must be downloaded and no credentials are set."""
    names = ", ".join(f"{a.name} (packageID={a.package_id})" for a in source.archives)
    return (
        f"{source.title} needs an account and no credentials are set. Either register at "
        f"{source.site}/register/ and export {CREDENTIAL_ENV[0]} and {CREDENTIAL_ENV[1]} (environment "
        "only: never put them in params.yaml), then rerun; or download "
        f"{names} from {source.homepage} in a browser into {archives_dir}/ (they are verified and "
        f"extracted from there); or set `{key}` to an extracted copy (currently {root!r}) and "
        f"`data.download: false`. See {DOCS}."
    )


def login(site: str, credentials: Credentials, timeout: float = 60.0) -> urllib.request.OpenerDirector:
    """Log in to an account-protected site (the Cityscapes login form); return an opener with the session.

    Raises:
        DownloadError: No network, or the login was refused (bad username or password).
    """
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect())
    opener.addheaders = [("User-Agent", USER_AGENT)]
    url = f"{site}/login/"
    form = {"username": credentials.username, "password": credentials.password, "submit": "Login"}
    try:
        with opener.open(url, timeout=timeout):
            pass
        try:
            with opener.open(url, data=urllib.parse.urlencode(form).encode(), timeout=timeout) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status = err.code
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(
            f"cannot reach {site} ({getattr(err, 'reason', err)}): no network? See {DOCS}"
        ) from None
    if status != 302:  # the site redirects after a successful login
        raise DownloadError(
            f"login to {site} refused (HTTP {status}): check {CREDENTIAL_ENV[0]} and {CREDENTIAL_ENV[1]}"
        )
    log.info("logged in to %s as %s", site, credentials.username)
    return opener


def server_md5(
    site: str, package_id: int, opener: urllib.request.OpenerDirector, timeout: float = 60.0
) -> str | None:
    """The MD5 the Cityscapes site publishes for a package (None if it cannot be read)."""
    url = f"{site}/md5-sum/?packageID={package_id}"
    try:
        with opener.open(url, timeout=timeout) as response:
            text = response.read(4096).decode("ascii", "replace")
    except (urllib.error.URLError, OSError) as err:
        log.warning("could not read the checksum of package %s (%s)", package_id, err)
        return None
    token = text.split()[0] if text.split() else ""
    return token.lower() if len(token) == 32 and _HEX.match(token) else None


# --- extraction ------------------------------------------------------------------------------------


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
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            moved += 1
    shutil.rmtree(src)
    return moved


def extract_zip(archive: str | Path, dest: str | Path, strip: str = "", into: str = "") -> int:
    """Extract a zip archive into ``dest`` (merged with what is there); return the number of files.

    Every member is checked before anything is written; members are written into a private
    temporary folder inside ``dest`` and moved into place at the end.

    Raises:
        UnsafeArchive: A member would land outside ``dest`` (nothing is written).
        DownloadError: The archive is incomplete or corrupt (CRC error, no central directory), or the
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
                raise DownloadError(
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
                    shutil.copyfileobj(src, out, CHUNK)
    except zipfile.BadZipFile as err:
        raise DownloadError(
            f"{archive}: incomplete or corrupt zip ({err}); delete it and rerun to download it again"
        ) from None
    return _merge(work, dest)


RAR_TOOLS = ("bsdtar", "unrar", "7z", "7zz")


def _rar_tool() -> str:
    for tool in RAR_TOOLS:
        if shutil.which(tool):
            return tool
    raise DownloadError(
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
        raise DownloadError(f"{tool} cannot list {archive.name}: {out.stderr.strip()[:500]}")
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
        raise DownloadError(f"{tool} failed on {archive.name}: {out.stderr.strip()[:500]}")
    staged = work.with_name(work.name + ".mapped")
    shutil.rmtree(staged, ignore_errors=True)
    for path in sorted(work.rglob("*")):
        if path.is_symlink():
            shutil.rmtree(work, ignore_errors=True)
            raise UnsafeArchive(f"{archive.name}: symbolic link {path.relative_to(work)} refused")
        if path.is_file():
            target = member_target(str(path.relative_to(work)), strip, into)
            final = _inside(staged, target)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, final)
    shutil.rmtree(work)
    return _merge(staged, dest) if staged.exists() else 0


def extract(archive: Path, dest: Path, spec: Archive) -> int:
    """Extract ``archive`` (zip or rar, by its name) into ``dest`` following ``spec``."""
    if archive.suffix.lower() == ".rar":
        return extract_rar(archive, dest, spec.strip, spec.into)
    return extract_zip(archive, dest, spec.strip, spec.into)


# --- a whole dataset -------------------------------------------------------------------------------


@dataclass
class _Session:
    """Lazily logged-in opener for account-protected sources."""

    source: Source
    env: Mapping[str, str] | None
    archives_dir: Path
    root: str
    key: str
    opener: urllib.request.OpenerDirector | None = None

    def get(self) -> urllib.request.OpenerDirector | None:
        if not self.source.needs_account:
            return None
        if self.opener is None:
            credentials = credentials_from_env(self.env)
            if credentials is None:
                raise CredentialsMissing(
                    missing_credentials_message(self.source, self.archives_dir, self.root, self.key)
                )
            self.opener = login(self.source.site, credentials)
        return self.opener


def ensure_archive(
    spec: Archive,
    archives_dir: Path,
    pins: Mapping[str, Mapping[str, str]],
    session: _Session,
    **fetch_options,
) -> Path:
    """The verified archive ``spec`` under ``archives_dir``: downloaded (or resumed) if missing.

    An archive put there by hand is used as it is, after the same verification.
    """
    path = archives_dir / spec.name
    known: dict[str, str | None] = {"sha256": spec.sha256, "md5": None}
    known.update({k: v for k, v in pins.get(spec.name, {}).items() if v})
    if path.exists():
        try:
            digests, checked = verify(path, known)
        except ChecksumMismatch as err:
            raise ChecksumMismatch(f"{err} ({path}: delete it to download it again)") from None
    else:
        opener = session.get()
        if spec.package_id is not None and opener is not None and not known.get("md5"):
            known["md5"] = server_md5(session.source.site, spec.package_id, opener)
        log.info("downloading %s from %s", spec.name, spec.url)
        digests = fetch(spec.url, path, opener=opener, known=known, **fetch_options)
        checked = any(known.values())
    record_digest(archives_dir, spec.name, digests["sha256"])
    if checked:
        log.info("%s verified (sha256 %s)", spec.name, digests["sha256"])
    else:
        log.warning(
            "%s is UNVERIFIED: no known checksum (sha256 %s). Pin it in the file named by data.checksums "
            "to verify future downloads.",
            spec.name,
            digests["sha256"],
        )
    return path


def fetch_dataset(
    fmt: str,
    root: str | Path,
    downloads: str | Path,
    pins: Mapping[str, Mapping[str, str]] | None = None,
    *,
    key: str = "data.source.root",
    source: Source | None = None,
    env: Mapping[str, str] | None = None,
    **fetch_options,
) -> Path:
    """Make ``root`` hold the dataset ``fmt`` in its official layout: download, verify and extract.

    Nothing happens if ``root`` already has the layout. Otherwise every archive is made present and
    verified under ``<downloads>/<fmt>/``, extracted into ``.<root>.partial`` (resuming archive by
    archive), and the folder is renamed to ``root`` once the layout is complete.

    Args:
        fmt: Dataset format (a key of :data:`~dacs_uda.data.sources.SOURCES`).
        root: The dataset root (must not exist, or be an empty folder).
        downloads: Folder for the archives.
        pins: User-pinned checksums (:func:`read_pins`).
        key: The params key of ``root``, for messages.
        source: Override of ``SOURCES[fmt]`` (tests).
        env: Environment to read credentials from (default ``os.environ``).
        **fetch_options: Passed to :func:`fetch` (retries, backoff, timeout).

    Raises:
        DownloadError: And subclasses; the message says what to do.
    """
    source = source or SOURCES[fmt]
    root = Path(root)
    if not missing_layout(fmt, root):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DownloadError(
            f"{root} exists but is not a complete {source.title} tree (missing: "
            f"{', '.join(missing_layout(fmt, root))}); it is left untouched. Move it away to download "
            f"afresh, or fix `{key}`."
        )
    archives_dir = Path(downloads) / fmt
    archives_dir.mkdir(parents=True, exist_ok=True)
    session = _Session(source, env, archives_dir, str(root), key)
    paths = [
        ensure_archive(spec, archives_dir, pins or {}, session, **fetch_options) for spec in source.archives
    ]
    staging = root.parent / f".{root.name}.partial"
    markers = root.parent / f".{root.name}.partial-done"
    markers.mkdir(parents=True, exist_ok=True)
    for spec, path in zip(source.archives, paths, strict=True):
        marker = markers / spec.name
        if marker.exists():
            continue
        count = extract(path, staging, spec)
        marker.write_text(f"{count}\n")
        log.info("extracted %s (%d files)", spec.name, count)
    missing = missing_layout(fmt, staging)
    if missing:
        raise DownloadError(
            f"after extracting every archive, {staging} lacks {', '.join(missing)}: the archives do not have "
            f"the expected {source.title} layout (see {DOCS})"
        )
    if root.is_dir():
        root.rmdir()  # empty, checked above
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, root)
    shutil.rmtree(markers)
    log.info("%s ready at %s", source.title, root)
    return root
