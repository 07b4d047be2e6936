"""Downloads against a local HTTP server on 127.0.0.1 (started per test, stops itself): resume after a
truncated transfer (conditional on the file being unchanged), checksums, safe and atomic extraction,
the Cityscapes login, and credentials that never leak into logs or files. RAR and 7z archives, which
need external tools, are tested in test_archives.py."""

from __future__ import annotations

import hashlib
import http.server
import logging
import os
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dacs_uda.data import archives, download, sources
from dacs_uda.data.acquire import fetch_dataset
from dacs_uda.data.archives import ArchiveError, UnsafeArchive, extract_zip, member_target
from dacs_uda.data.download import ChecksumMismatch, CredentialsMissing, DownloadError, fetch, read_pins
from dacs_uda.data.manifest import missing_layout
from dacs_uda.data.sources import Archive, Source
from tests.data import fixtures

USER, PASSWORD = "ada-lovelace-1815", "s3cret-Pa55word!"
SERVER_LIFETIME_S = 60.0  # the server shuts itself down after this, whatever the test does


@dataclass
class Site:
    """What the local server serves, and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)  # path -> body
    packages: dict[int, bytes] = field(default_factory=dict)  # Cityscapes packageID -> body
    md5: dict[int, str] = field(default_factory=dict)
    truncate_once: set[str] = field(default_factory=set)
    # path -> (body, validator headers) served from the moment the truncated answer has been sent
    change_after_truncate: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    validators: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> ETag / Last-Modified
    ignore_range: bool = False
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range
    if_ranges: list[str | None] = field(default_factory=list)  # If-Range of every file request
    bodies: list[bytes] = field(default_factory=list)


class Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _logged_in(self) -> bool:
        return "session=ok" in (self.headers.get("Cookie") or "")

    def _send(
        self, code: int, body: bytes, content_type: str = "application/octet-stream", **headers
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        site = self.server.site
        site.requests.append(("GET", self.path, self.headers.get("Range")))
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/login/":
            return self._send(200, b"<form>login</form>", "text/html")
        if url.path == "/md5-sum/":
            if not self._logged_in():
                return self._send(200, b"<html>log in first</html>", "text/html")
            return self._send(200, f"{site.md5[int(query['packageID'])]}  file.zip\n".encode(), "text/plain")
        if url.path == "/file-handling/":
            if not self._logged_in():
                return self._send(200, b"<html>log in first</html>", "text/html")
            return self._serve(site.packages[int(query["packageID"])], self.path)
        if self.path in site.files:
            return self._serve(site.files[self.path], self.path)
        return self._send(404, b"not found", "text/plain")

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        site = self.server.site
        site.requests.append(("POST", self.path, None))
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        site.bodies.append(body)
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if (
            form.get("username") == USER
            and form.get("password") == PASSWORD
            and form.get("submit") == "Login"
        ):
            self.send_response(302)
            self.send_header("Location", "/")
            self.send_header("Set-Cookie", "session=ok; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return self._send(200, b"<html>bad credentials</html>", "text/html")

    def _serve(self, data: bytes, key: str) -> None:
        site = self.server.site
        start = 0
        ranged = self.headers.get("Range")
        validators = site.validators.get(key, {})
        if_range = self.headers.get("If-Range")
        site.if_ranges.append(if_range)
        if if_range is not None and if_range not in validators.values():
            ranged = None  # RFC 9110 13.1.5: the file changed, send all of it
        if ranged and not site.ignore_range:
            start = int(ranged.split("=")[1].split("-")[0])
            if start >= len(data):
                return self._send(416, b"", "text/plain", Content_Range=f"bytes */{len(data)}")
        if key in site.truncate_once:  # announce everything, send half, hang up
            site.truncate_once.discard(key)
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(len(body)))
            for header, value in validators.items():
                self.send_header(header, value)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            if key in site.change_after_truncate:
                site.files[key], site.validators[key] = site.change_after_truncate.pop(key)
            return None
        if start:
            return self._send(
                206, data[start:], Content_Range=f"bytes {start}-{len(data) - 1}/{len(data)}", **validators
            )
        return self._send(200, data, **validators)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    site: Site


@pytest.fixture
def site() -> Iterator[tuple[Site, str]]:
    """A local server on 127.0.0.1 (ephemeral port), stopped after the test or after 60 s."""
    server = _Server(("127.0.0.1", 0), Handler)
    server.site = Site()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    timer = threading.Timer(SERVER_LIFETIME_S, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        yield server.site, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        timer.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


FAST = {"retries": 2, "backoff": 0.0, "timeout": 10.0}
BLOB = os.urandom(300_000)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- fetch: resume, checksums, errors --------------------------------------------------------------


def test_truncated_download_is_resumed_with_a_range_request(site, tmp_path: Path) -> None:
    server, base = site
    server.files["/a.zip"] = BLOB
    server.truncate_once.add("/a.zip")
    digests = fetch(f"{base}/a.zip", tmp_path / "a.zip", known={"sha256": sha256(BLOB)}, **FAST)
    assert (tmp_path / "a.zip").read_bytes() == BLOB and digests["sha256"] == sha256(BLOB)
    assert not (tmp_path / "a.zip.part").exists()
    ranges = [r for _, path, r in server.requests if path == "/a.zip"]
    assert ranges == [None, f"bytes={len(BLOB) // 2}-"]


def test_a_part_file_left_by_an_interrupted_run_is_resumed(site, tmp_path: Path) -> None:
    server, base = site
    server.files["/a.zip"] = BLOB
    (tmp_path / "a.zip.part").write_bytes(BLOB[:123_456])
    fetch(f"{base}/a.zip", tmp_path / "a.zip", **FAST)
    assert (tmp_path / "a.zip").read_bytes() == BLOB
    assert server.requests == [("GET", "/a.zip", "bytes=123456-")]


def test_complete_part_file_is_recognised_by_a_416_answer(site, tmp_path: Path) -> None:
    server, base = site
    server.files["/a.zip"] = BLOB
    (tmp_path / "a.zip.part").write_bytes(BLOB)
    fetch(f"{base}/a.zip", tmp_path / "a.zip", known={"sha256": sha256(BLOB)}, **FAST)
    assert (tmp_path / "a.zip").read_bytes() == BLOB


def test_part_file_longer_than_the_remote_file_starts_over(site, tmp_path: Path) -> None:
    server, base = site
    server.files["/a.zip"] = BLOB
    (tmp_path / "a.zip.part").write_bytes(BLOB + b"stale tail")
    fetch(f"{base}/a.zip", tmp_path / "a.zip", known={"sha256": sha256(BLOB)}, **FAST)
    assert (tmp_path / "a.zip").read_bytes() == BLOB
    assert [r for _, _, r in server.requests] == [f"bytes={len(BLOB) + 10}-", None]


ETAG_V1 = {"ETag": '"v1"'}
MODIFIED_V1 = {"Last-Modified": "Sun, 01 Nov 2026 10:00:00 GMT"}
WEAK_ETAG_V1 = {"ETag": 'W/"v1"', **MODIFIED_V1}  # a weak ETag cannot be used: Last-Modified is


@pytest.mark.parametrize(
    ("validators", "sent"),
    [
        (ETAG_V1, '"v1"'),
        (MODIFIED_V1, MODIFIED_V1["Last-Modified"]),
        (WEAK_ETAG_V1, MODIFIED_V1["Last-Modified"]),
    ],
)
def test_a_resume_is_conditional_on_the_file_of_the_first_attempt(
    site, tmp_path: Path, validators: dict[str, str], sent: str
) -> None:
    server, base = site
    server.files["/a.zip"], server.validators["/a.zip"] = BLOB, validators
    server.truncate_once.add("/a.zip")
    fetch(f"{base}/a.zip", tmp_path / "a.zip", known={"sha256": sha256(BLOB)}, **FAST)
    assert (tmp_path / "a.zip").read_bytes() == BLOB
    assert [r for _, _, r in server.requests] == [None, f"bytes={len(BLOB) // 2}-"]
    assert server.if_ranges == [None, sent]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]  # no .part, no .part-validator


@pytest.mark.parametrize(
    "changed",
    [{"ETag": '"v2"'}, {"Last-Modified": "Sun, 29 Nov 2026 10:00:00 GMT"}],
    ids=["etag", "last-modified"],
)
def test_a_file_changed_on_the_server_between_attempts_is_downloaded_again(
    site, tmp_path: Path, changed: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    server, base = site
    new = os.urandom(len(BLOB))
    server.files["/a.zip"], server.validators["/a.zip"] = BLOB, {**ETAG_V1, **MODIFIED_V1}
    server.truncate_once.add("/a.zip")
    server.change_after_truncate["/a.zip"] = (new, changed)
    with caplog.at_level(logging.WARNING, logger="dacs_uda"):
        fetch(f"{base}/a.zip", tmp_path / "a.zip", known={"sha256": sha256(new)}, **FAST)
    assert (tmp_path / "a.zip").read_bytes() == new  # not the first half of BLOB spliced onto new
    assert server.if_ranges == [None, '"v1"']
    assert "a.zip changed on the server since the first attempt" in caplog.text


def test_a_part_file_of_a_changed_file_left_by_an_earlier_run_starts_over(site, tmp_path: Path) -> None:
    server, base = site
    server.files["/a.zip"], server.validators["/a.zip"] = BLOB, {"ETag": '"v2"'}
    (tmp_path / "a.zip.part").write_bytes(os.urandom(123_456))  # bytes of the old file
    (tmp_path / "a.zip.part-validator").write_text('"v1"')
    fetch(f"{base}/a.zip", tmp_path / "a.zip", **FAST)
    assert (tmp_path / "a.zip").read_bytes() == BLOB
    assert server.requests == [("GET", "/a.zip", "bytes=123456-")] and server.if_ranges == ['"v1"']
    assert not (tmp_path / "a.zip.part-validator").exists()


def test_server_ignoring_range_restarts_instead_of_corrupting(site, tmp_path: Path) -> None:
    server, base = site
    server.files["/a.zip"] = BLOB
    server.ignore_range = True
    (tmp_path / "a.zip.part").write_bytes(b"x" * 1000)
    fetch(f"{base}/a.zip", tmp_path / "a.zip", **FAST)
    assert (tmp_path / "a.zip").read_bytes() == BLOB


def test_checksum_mismatch_keeps_nothing(site, tmp_path: Path) -> None:
    server, base = site
    server.files["/a.zip"] = BLOB
    with pytest.raises(ChecksumMismatch, match=r"sha256 is [0-9a-f]{64}, expected 0{64}.*deleted"):
        fetch(f"{base}/a.zip", tmp_path / "a.zip", known={"sha256": "0" * 64}, **FAST)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_says_no_network_and_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match=r"no network\?.*point params at an extracted copy"):
        fetch(f"http://127.0.0.1:{port}/a.zip", tmp_path / "a.zip", **FAST)


def test_missing_file_is_reported(site, tmp_path: Path) -> None:
    _, base = site
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{base}/nothing.zip", tmp_path / "n.zip", **FAST)


def test_pins_file_format(tmp_path: Path) -> None:
    pins = tmp_path / "pins.txt"
    pins.write_text(f"# pinned\n{'a' * 64}  01_images.zip\n{'B' * 32} *gtFine_trainvaltest.zip\n\n")
    assert read_pins(pins) == {
        "01_images.zip": {"sha256": "a" * 64},
        "gtFine_trainvaltest.zip": {"md5": "b" * 32},
    }
    assert read_pins(None) == {}
    pins.write_text("abc  file.zip\n")
    with pytest.raises(DownloadError, match=r"pins.txt:1"):
        read_pins(pins)
    with pytest.raises(DownloadError, match="not found"):
        read_pins(tmp_path / "nope.txt")


# --- safe extraction -------------------------------------------------------------------------------


def test_member_names_are_checked() -> None:
    assert member_target("RAND_CITYSCAPES/RGB/0000000.png", strip="RAND_CITYSCAPES") == "RGB/0000000.png"
    assert member_target("00001.png", into="images") == "images/00001.png"
    assert member_target("images/00001.png", into="images") == "images/00001.png"
    assert member_target("GT\\LABELS\\0000000.png") == "GT/LABELS/0000000.png"
    for bad in ("../evil.png", "images/../../evil.png", "/etc/passwd", "C:\\evil.png", "a\\..\\..\\b"):
        with pytest.raises(UnsafeArchive):
            member_target(bad)


def test_archive_with_unsafe_members_writes_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("valid")
    archive = tmp_path / "evil.zip"
    archive.write_bytes(
        fixtures.zip_bytes(
            {"images/00001.png": b"ok", "../escaped.txt": b"x", "/abs.txt": b"x"},
            symlinks={"images/link.png": "/etc/passwd"},
        )
    )
    with pytest.raises(UnsafeArchive) as err:
        extract_zip(archive, dest)
    message = str(err.value)
    assert "3 unsafe members" in message and "../escaped.txt" in message and "symbolic link" in message
    assert not (tmp_path / "escaped.txt").exists()
    assert (
        sorted(p.name for p in dest.rglob("*")) == ["keep.txt"] and (dest / "keep.txt").read_text() == "valid"
    )


def test_truncated_archive_is_reported_and_nothing_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "01_images.zip"
    data = fixtures.zip_bytes({f"images/{i:05d}.png": os.urandom(2000) for i in range(1, 4)})
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="incomplete or corrupt zip.*delete it"):
        extract_zip(archive, tmp_path / "dest")
    assert not any((tmp_path / "dest").rglob("*.png")) if (tmp_path / "dest").exists() else True


# --- whole datasets --------------------------------------------------------------------------------


def gta5_source(base: str) -> Source:
    return Source(
        format="gta5",
        title="GTA5",
        homepage=base,
        archives=tuple(
            Archive(name=f"{p:02d}_{kind}.zip", url=f"{base}/gta/{p:02d}_{kind}.zip", into=kind)
            for p in (1, 2)
            for kind in ("images", "labels")
        ),
    )


def serve_gta5(server: Site, tmp_path: Path) -> Path:
    """Two parts of a GTA5 fixture tree as zips; part 2's labels lack the labels/ folder in their names."""
    tree = fixtures.gta5_tree(tmp_path / "tree", count=4)
    for p, names in ((1, ("00001.png", "00002.png")), (2, ("00003.png", "00004.png"))):
        for kind in ("images", "labels"):
            prefix = "" if (p, kind) == (2, "labels") else f"{kind}/"
            members = {prefix + n: (tree / kind / n).read_bytes() for n in names}
            server.files[f"/gta/{p:02d}_{kind}.zip"] = fixtures.zip_bytes(members)
    return tree


def test_gta5_is_downloaded_verified_and_extracted_atomically(
    site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, base = site
    tree = serve_gta5(server, tmp_path)
    pinned = sha256(server.files["/gta/01_images.zip"])
    root, downloads = tmp_path / "data" / "gta5", tmp_path / "downloads"
    with caplog.at_level(logging.INFO, logger="dacs_uda"):
        fetch_dataset(
            "gta5", root, downloads, {"01_images.zip": {"sha256": pinned}}, source=gta5_source(base), **FAST
        )
    assert missing_layout("gta5", root) == []
    for kind in ("images", "labels"):
        assert sorted(p.name for p in (root / kind).iterdir()) == [f"{i:05d}.png" for i in range(1, 5)]
        assert (root / kind / "00004.png").read_bytes() == (tree / kind / "00004.png").read_bytes()
    assert sorted(p.name for p in root.parent.iterdir()) == ["gta5"]  # no staging left
    sums = (downloads / "gta5" / "SHA256SUMS").read_text()
    assert f"{pinned}  01_images.zip" in sums and len(sums.splitlines()) == 4
    assert "01_images.zip verified" in caplog.text
    assert "02_labels.zip is UNVERIFIED" in caplog.text
    server.requests.clear()
    fetch_dataset("gta5", root, downloads, source=gta5_source(base), **FAST)  # present: nothing to do
    assert server.requests == []


def test_half_extracted_dataset_never_counts_and_resumes(site, tmp_path: Path, monkeypatch) -> None:
    server, base = site
    serve_gta5(server, tmp_path)
    root, downloads = tmp_path / "data" / "gta5", tmp_path / "downloads"
    good = server.files["/gta/02_images.zip"]
    (downloads / "gta5").mkdir(parents=True)
    (downloads / "gta5" / "02_images.zip").write_bytes(good[: len(good) // 2])  # put there by hand, cut
    with pytest.raises(ArchiveError, match="02_images.zip: incomplete or corrupt zip"):
        fetch_dataset("gta5", root, downloads, source=gta5_source(base), **FAST)
    assert not root.exists() and missing_layout("gta5", root) != []
    assert (tmp_path / "data" / ".gta5.partial-done" / "01_images.zip").exists()
    (downloads / "gta5" / "02_images.zip").write_bytes(good)
    calls = []
    real = archives.extract
    monkeypatch.setattr(archives, "extract", lambda a, d, s: calls.append(a.name) or real(a, d, s))
    fetch_dataset("gta5", root, downloads, source=gta5_source(base), **FAST)
    assert calls == ["02_images.zip", "02_labels.zip"]  # part 1 was already in
    assert len(list((root / "images").iterdir())) == 4


def test_an_existing_incomplete_root_is_left_untouched(tmp_path: Path) -> None:
    root = tmp_path / "gta5"
    (root / "images").mkdir(parents=True)
    (root / "images" / "00001.png").write_bytes(b"mine")
    with pytest.raises(DownloadError, match="left untouched.*data.source.root"):
        fetch_dataset("gta5", root, tmp_path / "downloads")
    assert (root / "images" / "00001.png").read_bytes() == b"mine"


def cityscapes_source(base: str) -> Source:
    return Source(
        format="cityscapes",
        title="Cityscapes",
        homepage=f"{base}/downloads/",
        archives=(
            Archive("leftImg8bit_trainvaltest.zip", f"{base}/file-handling/?packageID=3", package_id=3),
            Archive("gtFine_trainvaltest.zip", f"{base}/file-handling/?packageID=1", package_id=1),
        ),
        needs_account=True,
        site=base,
    )


def serve_cityscapes(server: Site, tmp_path: Path) -> None:
    tree = fixtures.cityscapes_tree(tmp_path / "cs_tree")
    server.packages[3] = fixtures.zip_bytes(
        {**{k: v for k, v in _members(tree, "leftImg8bit").items()}, "README": b"r", "license.txt": b"l"}
    )
    server.packages[1] = fixtures.zip_bytes(_members(tree, "gtFine"))
    server.md5 = {k: hashlib.md5(v).hexdigest() for k, v in server.packages.items()}


def _members(tree: Path, top: str) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted((tree / top).rglob("*")) if p.is_file()}


def test_cityscapes_login_download_and_server_checksums(
    site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, base = site
    serve_cityscapes(server, tmp_path)
    root, downloads = tmp_path / "data" / "cityscapes", tmp_path / "downloads"
    env = {"CITYSCAPES_USERNAME": USER, "CITYSCAPES_PASSWORD": PASSWORD}
    with caplog.at_level(logging.DEBUG):
        fetch_dataset(
            "cityscapes",
            root,
            downloads,
            key="data.target.root",
            source=cityscapes_source(base),
            env=env,
            **FAST,
        )
    assert missing_layout("cityscapes", root) == []
    assert (
        "leftImg8bit_trainvaltest.zip verified" in caplog.text
        and "gtFine_trainvaltest.zip verified" in caplog.text
    )
    assert [r[1] for r in server.requests if r[0] == "POST"] == ["/login/"]
    assert dict(urllib.parse.parse_qsl(server.bodies[0].decode()))["password"] == PASSWORD  # form body only
    secrets = (PASSWORD, urllib.parse.quote_plus(PASSWORD))
    assert all(s not in path for s in secrets for _, path, _ in server.requests)
    assert all(s not in caplog.text for s in secrets)
    assert "logged in to" in caplog.text and USER not in caplog.text  # the username is not logged either
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert all(s.encode() not in path.read_bytes() for s in secrets), path


def test_cityscapes_checksum_from_the_site_is_enforced(site, tmp_path: Path) -> None:
    server, base = site
    serve_cityscapes(server, tmp_path)
    server.md5[1] = "0" * 32
    env = {"CITYSCAPES_USERNAME": USER, "CITYSCAPES_PASSWORD": PASSWORD}
    with pytest.raises(ChecksumMismatch, match="gtFine_trainvaltest.zip: md5"):
        fetch_dataset(
            "cityscapes", tmp_path / "cs", tmp_path / "dl", source=cityscapes_source(base), env=env, **FAST
        )
    assert (
        not (tmp_path / "cs").exists()
        and not (tmp_path / "dl" / "cityscapes" / "gtFine_trainvaltest.zip").exists()
    )


def test_bad_credentials_are_refused_without_echoing_them(
    site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, base = site
    serve_cityscapes(server, tmp_path)
    env = {"CITYSCAPES_USERNAME": USER, "CITYSCAPES_PASSWORD": "wrong-" + PASSWORD}
    with caplog.at_level(logging.DEBUG), pytest.raises(DownloadError) as err:
        fetch_dataset(
            "cityscapes", tmp_path / "cs", tmp_path / "dl", source=cityscapes_source(base), env=env, **FAST
        )
    assert "login" in str(err.value) and "CITYSCAPES_PASSWORD" in str(err.value)
    assert PASSWORD not in str(err.value) and PASSWORD not in caplog.text
    assert repr(download.Credentials(USER, PASSWORD)) == f"Credentials(username={USER!r}, password='***')"


def test_missing_credentials_say_how_to_proceed(site, tmp_path: Path) -> None:
    server, base = site
    with pytest.raises(CredentialsMissing) as err:
        fetch_dataset(
            "cityscapes",
            tmp_path / "cs",
            tmp_path / "dl",
            key="data.target.root",
            source=cityscapes_source(base),
            env={},
        )
    message = str(err.value)
    for needle in (
        "CITYSCAPES_USERNAME",
        "CITYSCAPES_PASSWORD",
        "register",
        "data.target.root",
        "packageID=3",
        "never",
    ):
        assert needle in message
    assert server.requests == []


def test_html_instead_of_the_archive_is_refused(site, tmp_path: Path) -> None:
    server, base = site
    server.packages[1] = b"PK..."
    with pytest.raises(DownloadError, match="HTML page instead of the file"):
        fetch(f"{base}/file-handling/?packageID=1", tmp_path / "g.zip", **FAST)
    assert not (tmp_path / "g.zip").exists()


def test_data_stage_downloads_a_missing_real_dataset(site, tmp_path: Path, monkeypatch) -> None:
    from dacs_uda.config import compose_params
    from dacs_uda.data import acquire

    server, base = site
    serve_gta5(server, tmp_path)
    monkeypatch.setitem(sources.SOURCES, "gta5", gta5_source(base))
    cityscapes = fixtures.cityscapes_tree(tmp_path / "cityscapes")
    cfg = compose_params(
        [
            "dataset=gta5_cityscapes",
            f"data.source.root={tmp_path / 'data' / 'raw' / 'gta5'}",
            "data.source.resize=[32,18]",
            f"data.target.root={cityscapes}",
            "data.target.resize=[32,16]",
            "data.crop=[16,16]",
            f"data.downloads={tmp_path / 'downloads'}",
        ]
    ).data
    assert cfg.download is False
    with pytest.raises(acquire.DataMissing, match=r"(?s)`data.source.root`.*data.download: true"):
        acquire.acquire_real(cfg)
    cfg.download = True
    acquire.acquire_real(cfg, env={}, **FAST)  # GTA5 needs no account; Cityscapes is found, not fetched
    assert missing_layout("gta5", cfg.source.root) == []
    assert acquire.sample_picture(cfg).shape[1] == 4 * (32 + 2)
