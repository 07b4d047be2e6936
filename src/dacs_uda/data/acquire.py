"""Stage ``data``: write the embedded benchmark (real datasets come through the same layouts).

The embedded pair is generated into a temporary folder and renamed into place only when complete,
so an interrupted run never leaves a dataset that looks finished.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dacs_uda.config import DataConfig, load_params
from dacs_uda.data import synth
from dacs_uda.labels import label_id_to_train_id_lut
from dacs_uda.utils.io import atomic_path
from dacs_uda.utils.logging import setup_logging
from dacs_uda.viz import grid, label_panel, save_png

log = logging.getLogger(__name__)

SAMPLES_PNG = Path("reports/embedded_samples.png")


def generate_embedded(cfg: DataConfig, workers: int = 2) -> None:
    """Write the source (GTA5 layout) and target (Cityscapes layout) domains to their roots."""
    emb = cfg.embedded
    with atomic_path(cfg.source.root) as tmp:
        synth.generate_source(tmp, emb.seed, emb.n_source, tuple(emb.source_size), workers)
    with atomic_path(cfg.target.root) as tmp:
        counts = {"train": emb.n_target_train, "val": emb.n_target_val}
        synth.generate_target(tmp, emb.seed, counts, tuple(emb.target_size), workers)


def sample_picture(cfg: DataConfig, count: int = 4) -> np.ndarray:
    """Rows of (source image, source label, target image, target label), at the target size."""
    lut = label_id_to_train_id_lut()
    size = tuple(cfg.embedded.target_size)

    def panels(image_path: Path, label_path: Path) -> list[np.ndarray]:
        image = Image.open(image_path).convert("RGB").resize(size, Image.BICUBIC)
        label = Image.open(label_path).resize(size, Image.NEAREST)
        return [np.asarray(image), label_panel(lut[np.asarray(label)])]

    rows = []
    for i in range(count):
        source = synth.gta5_paths(Path(cfg.source.root), i)
        target = synth.cityscapes_paths(Path(cfg.target.root), "train", i)[:2]
        rows.append(panels(*source) + panels(*target))
    return grid(rows, ["source (GTA5 layout)", "source label", "target (Cityscapes layout)", "target label"])


def main() -> int:
    setup_logging()
    params = load_params()
    cfg = params.data
    start = time.perf_counter()
    generate_embedded(cfg)
    save_png(SAMPLES_PNG, sample_picture(cfg))
    log.info(
        "embedded benchmark written to %s and %s in %.0f s",
        cfg.source.root,
        cfg.target.root,
        time.perf_counter() - start,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
