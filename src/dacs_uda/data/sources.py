"""Where the real datasets come from: official URLs, archive names and what is known about them.

Facts only, as data. Checksums are recorded only where the provider publishes them; ``None`` means
*unknown*: the download is then reported as unverified, and users can pin checksums in the file
named by ``data.checksums`` (``sha256sum``/``md5sum`` format, see :func:`dacs_uda.data.download.read_pins`).

* GTA5 ("Playing for Data", Richter et al. 2016): 10 image and 10 label zip parts on the TU Darmstadt
  download page; no account; no published checksums.
* Cityscapes (Cordts et al. 2016): needs an account (https://www.cityscapes-dataset.com/register/).
  The site's login form, ``file-handling/?packageID=N`` downloads and ``md5-sum/?packageID=N``
  checksums are the interface the official ``csDownload`` tool (cityscapesScripts) uses; the MD5
  each package has is fetched from the site at download time and verified.
* SYNTHIA-RAND-CITYSCAPES (Ros et al. 2016): one RAR archive from the SYNTHIA site; no published
  checksum. Python cannot read RAR: extracting needs ``bsdtar`` (libarchive-tools) on the PATH.
"""

from __future__ import annotations

from dataclasses import dataclass

CITYSCAPES_SITE = "https://www.cityscapes-dataset.com"
GTA5_BASE = "https://download.visinf.tu-darmstadt.de/data/from_games/data"
SYNTHIA_URL = "http://synthia-dataset.cvc.uab.cat/SYNTHIA_RAND_CITYSCAPES.rar"

CREDENTIAL_ENV = ("CITYSCAPES_USERNAME", "CITYSCAPES_PASSWORD")
DOCS = "docs/datasets.md"  # where users read how to get each dataset (named in every error message)


@dataclass(frozen=True)
class Archive:
    """One file to download and extract into a dataset root."""

    name: str  # file name under <data.downloads>/<format>/
    url: str
    sha256: str | None = None  # published checksum; None = unknown
    into: str = ""  # members go under this folder (added if the archive lacks it)
    strip: str = ""  # leading folder removed from member names
    package_id: int | None = None  # Cityscapes package (login + server-side MD5)


@dataclass(frozen=True)
class Source:
    """A dataset's download: its archives and how to reach them."""

    format: str
    title: str
    homepage: str
    archives: tuple[Archive, ...]
    needs_account: bool = False
    site: str = ""  # base URL of an account-protected site (login, package downloads, checksums)
    size_note: str = ""  # approximate total size, as the provider states it (not verified)


def _gta5_archives() -> tuple[Archive, ...]:
    parts = []
    for part in range(1, 11):
        for kind in ("images", "labels"):
            name = f"{part:02d}_{kind}.zip"
            parts.append(Archive(name=name, url=f"{GTA5_BASE}/{name}", into=kind))
    return tuple(parts)


SOURCES: dict[str, Source] = {
    "gta5": Source(
        format="gta5",
        title="GTA5 (Playing for Data)",
        homepage="https://download.visinf.tu-darmstadt.de/data/from_games/",
        archives=_gta5_archives(),
    ),
    "cityscapes": Source(
        format="cityscapes",
        title="Cityscapes",
        homepage="https://www.cityscapes-dataset.com/downloads/",
        archives=(
            Archive(
                name="leftImg8bit_trainvaltest.zip",
                url=f"{CITYSCAPES_SITE}/file-handling/?packageID=3",
                package_id=3,
            ),
            Archive(
                name="gtFine_trainvaltest.zip",
                url=f"{CITYSCAPES_SITE}/file-handling/?packageID=1",
                package_id=1,
            ),
        ),
        needs_account=True,
        site=CITYSCAPES_SITE,
        size_note="about 11 GB (leftImg8bit) + 241 MB (gtFine), per the download page",
    ),
    "synthia": Source(
        format="synthia",
        title="SYNTHIA-RAND-CITYSCAPES",
        homepage="https://synthia-dataset.net/downloads/",
        archives=(Archive(name="SYNTHIA_RAND_CITYSCAPES.rar", url=SYNTHIA_URL, strip="RAND_CITYSCAPES"),),
    ),
}
