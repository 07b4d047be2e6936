"""Download the real datasets' archives: resumable, verified, credentials kept out of sight.

* **Resumable**: bytes go to ``<name>.part``; an interrupted or dropped transfer is continued with an
  HTTP ``Range`` request carrying ``If-Range`` with the ETag (or Last-Modified date) of the first
  attempt, kept in ``<name>.part-validator``: a file that changed on the server in between, like a
  server that ignores ``Range``, makes the download start over, never splices two files.
  The archive gets its final name only when it is complete and its checksum matched
  (:mod:`dacs_uda.data.staging`).
* **Verified**: SHA-256 (and MD5) of every archive are computed before it is used and compared with
  the known checksums: the provider's (:mod:`dacs_uda.data.sources`, or the Cityscapes site's MD5
  fetched at download time) and the user's pins (``data.checksums``). With none known, the log says
  the archive is UNVERIFIED and gives its SHA-256 to pin; ``SHA256SUMS`` beside the archives lists them.
* **Credentials** (Cityscapes) come from ``CITYSCAPES_USERNAME`` / ``CITYSCAPES_PASSWORD`` only; they
  are sent in the login form's body and never logged, put in URLs, params, lock files or metrics.

Extracting the archives is :mod:`dacs_uda.data.archives`' job.
"""

from __future__ import annotations

import hashlib
import http.client
import http.cookiejar
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dacs_uda.data.sources import CREDENTIAL_ENV, DOCS, Archive, Source
from dacs_uda.data.staging import part_file, part_validator, promote
from dacs_uda.utils.io import write_text

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "dacs-uda-downloader/1"
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class DownloadError(RuntimeError):
    """A download or extraction could not be completed (the message says why and what to do)."""


class ChecksumMismatch(DownloadError):
    """An archive's checksum differs from the known one."""


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
    write_text(sums, "\n".join(sorted(lines, key=lambda x: x.split("  ", 1)[-1])) + "\n")


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


def _validator(headers: Mapping[str, str]) -> str | None:
    """What ``If-Range`` may name for this response's body: its strong ETag, else its Last-Modified."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):  # RFC 9110: a weak ETag cannot make a Range conditional
        return etag
    return headers.get("Last-Modified")


def _remember_validator(headers: Mapping[str, str], path: Path) -> None:
    value = _validator(headers)
    if value:
        write_text(path, value)
    else:
        path.unlink(missing_ok=True)


def _discard_part(part: Path, validator: Path) -> None:
    part.unlink(missing_ok=True)
    validator.unlink(missing_ok=True)


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
    # Not atomic_path: its temporary is deleted when the block fails, and the bytes of an interrupted
    # download must stay for the next run to resume (dacs_uda.data.staging).
    part, validator = part_file(dest), part_validator(dest)
    opener = opener or urllib.request.build_opener()
    total: int | None = None
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
            if validator.is_file():
                request.add_header("If-Range", validator.read_text())
        try:
            with opener.open(request, timeout=timeout) as response:
                if response.status != 206:  # the whole file from its first byte: what a resume must match
                    if offset:
                        log.warning(
                            "%s changed on the server since the first attempt (or the server ignores "
                            "Range): downloading it again from the start",
                            dest.name,
                        )
                    _remember_validator(response.headers, validator)
                total = _receive(response, part, offset, total, on_progress)
            break
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:  # nothing left to send: complete if the sizes agree
                remote = _content_range_total(err.headers.get("Content-Range"))
                if remote == offset:
                    total = offset
                    break
                _discard_part(part, validator)  # the partial file does not match the remote one: start over
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
        _discard_part(part, validator)
        raise ChecksumMismatch(f"{err}; the download was deleted, rerun to download it again") from None
    promote(part, dest)
    validator.unlink(missing_ok=True)
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
        f"{names} from {source.homepage} in a browser into {archives_dir}/ (they are extracted from "
        "there, checked against data.checksums when it pins them, else reported unverified); or set "
        f"`{key}` to an extracted copy (currently {root!r}) and "
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
    log.info("logged in to %s", site)  # without the username: credentials never reach the logs
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


def download_archives(
    source: Source,
    archives_dir: Path,
    pins: Mapping[str, Mapping[str, str]],
    *,
    root: str,
    key: str,
    env: Mapping[str, str] | None = None,
    **fetch_options,
) -> list[Path]:
    """Every archive of ``source``, verified, under ``archives_dir`` (downloaded or resumed if missing).

    Args:
        source: The dataset's download facts.
        archives_dir: Folder for the archives (``<data.downloads>/<format>``).
        pins: User-pinned checksums (:func:`read_pins`).
        root: The dataset root they are for, and ``key``, its params key: both for messages.
        env: Environment to read credentials from (default ``os.environ``); read only when an
            account-protected archive must be downloaded.
        **fetch_options: Passed to :func:`fetch` (retries, backoff, timeout).

    Raises:
        DownloadError: And subclasses; the message says what to do.
    """
    archives_dir.mkdir(parents=True, exist_ok=True)
    session = _Session(source, env, archives_dir, root, key)
    return [ensure_archive(spec, archives_dir, pins, session, **fetch_options) for spec in source.archives]
