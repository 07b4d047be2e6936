"""Evaluation protocols, the evaluation loop, prediction files and the confusion plot data."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dvc_render.vega import VegaRenderer
from PIL import Image

from dacs_uda.config import ConfigError, compose_params, parse_params
from dacs_uda.data.synth import cityscapes_paths
from dacs_uda.evaluate import (
    EvalDataset,
    collate,
    confusion_rows,
    evaluate_backends,
    label_size_for,
    load_label,
    predict_labels,
)
from dacs_uda.labels import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
from dacs_uda.metrics import ConfusionMatrix
from dacs_uda.models.deeplabv2 import upsample_logits
from dacs_uda.stages import evaluate as evaluate_stage
from tests.conftest import write_params
from tests.eval.conftest import N_VAL, NATIVE, RESIZE, eval_params

REPO = Path(__file__).resolve().parents[2]


def val_rows(root: Path) -> pd.DataFrame:
    paths = [cityscapes_paths(root, "val", i) for i in range(N_VAL)]
    return pd.DataFrame({"image": [str(p[0]) for p in paths], "label": [str(p[1]) for p in paths]})


def test_label_sizes_of_the_protocols() -> None:
    assert label_size_for("official", [1024, 512]) == (1024, 512)
    assert label_size_for("full", [1024, 512]) is None
    with pytest.raises(ValueError, match="official"):
        label_size_for("multiscale", [1024, 512])
    with pytest.raises(ConfigError, match="evaluate.protocol"):
        raw = dataclasses.asdict(compose_params())
        parse_params({**raw, "evaluate": {**raw["evaluate"], "protocol": "fullres"}})


@pytest.mark.parametrize(("protocol", "label_size"), [("official", RESIZE), ("full", NATIVE)])
def test_dataset_resizes_images_and_labels_per_protocol(target_tree, protocol, label_size) -> None:
    dataset = EvalDataset(val_rows(target_tree), RESIZE, label_size_for(protocol, list(RESIZE)))
    batch = collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, RESIZE[1], RESIZE[0])
    assert [tuple(lab.shape) for lab in batch["label"]] == [label_size[::-1]] * 2
    native = load_label(cityscapes_paths(target_tree, "val", 0)[1], None)
    if protocol == "full":
        assert np.array_equal(batch["label"][0].numpy(), native)
    else:  # nearest: every value of the resized label exists in the native one
        assert set(np.unique(batch["label"][0].numpy())) <= set(np.unique(native))


def test_predict_labels_upsamples_logits_like_the_official_code() -> None:
    logits = torch.randn(2, NUM_CLASSES, 4, 8, generator=torch.Generator().manual_seed(0))
    same = predict_labels(logits, (4, 8))
    assert torch.equal(same, logits.argmax(1))
    up = predict_labels(logits, (9, 17))
    expected = torch.nn.functional.interpolate(logits, (9, 17), mode="bilinear", align_corners=True).argmax(1)
    assert torch.equal(up, expected) and torch.equal(up, upsample_logits(logits, (9, 17)).argmax(1))


@pytest.mark.parametrize(
    ("protocol", "pixels"), [("official", RESIZE[0] * RESIZE[1]), ("full", NATIVE[0] * NATIVE[1])]
)
def test_loop_counts_every_labelled_pixel_at_the_protocol_size(target_tree, protocol, pixels) -> None:
    """A backend that always says 'road' (constant logits) at the input size: counts are exact."""
    dataset = EvalDataset(val_rows(target_tree), RESIZE, label_size_for(protocol, list(RESIZE)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate)

    def road(images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(images.shape[0], NUM_CLASSES, *images.shape[-2:])
        logits[:, 0] = 1.0
        return logits

    seen = []
    matrices = evaluate_backends({"road": road}, loader, torch.device("cpu"), lambda b, lo, p: seen.append(p))
    matrix = matrices["road"]
    labels = [dataset[i]["label"] for i in range(N_VAL)]
    labelled = sum(int((lab != IGNORE_INDEX).sum()) for lab in labels)
    assert int(matrix.matrix.sum()) == labelled <= N_VAL * pixels
    assert int(matrix.matrix[:, 1:].sum()) == 0  # only the road column
    expected = torch.bincount(torch.cat([lab[lab != IGNORE_INDEX] for lab in labels]), minlength=NUM_CLASSES)
    assert torch.equal(matrix.matrix[:, 0], expected)
    assert [len(p["road"]) for p in seen] == [3, 1]  # the hook sees each batch's predictions


def test_two_backends_share_batches_and_equal_backends_agree(target_tree) -> None:
    dataset = EvalDataset(val_rows(target_tree), RESIZE, None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate)
    weight = torch.randn(NUM_CLASSES, 3, generator=torch.Generator().manual_seed(1))

    def linear(images: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kc,nchw->nkhw", weight, images)

    matrices = evaluate_backends({"a": linear, "b": linear}, loader, torch.device("cpu"))
    assert torch.equal(matrices["a"].matrix, matrices["b"].matrix)


def test_confusion_rows_are_row_normalised_percentages() -> None:
    matrix = ConfusionMatrix(NUM_CLASSES)
    matrix.update(torch.tensor([0, 0, 0, 1, 2]), torch.tensor([0, 0, 1, 1, 0]))
    rows = confusion_rows({"m": matrix})
    assert len(rows) == NUM_CLASSES**2 and rows[0] == {
        "model": "m",
        "actual": "road",
        "predicted": "road",
        "share": pytest.approx(200 / 3),
    }
    by_actual: dict[str, float] = {}
    for row in rows:
        by_actual[row["actual"]] = by_actual.get(row["actual"], 0.0) + row["share"]
    assert by_actual["road"] == pytest.approx(100) and by_actual["sidewalk"] == pytest.approx(100)
    assert by_actual["sky"] == 0.0  # absent from the ground truth


def test_stage_writes_metrics_plots_and_predictions(workspace: Path) -> None:
    write_params(workspace, eval_params("official", {"dacs": "models/dacs.pt", "also": "models/dacs.pt"}))
    assert evaluate_stage.main() == 0
    metrics = json.loads(Path("metrics/eval.json").read_text())
    assert set(metrics) == {"dacs", "also"} and metrics["dacs"] == metrics["also"]
    assert set(metrics["dacs"]) == {"mIoU", "mIoU16", "mIoU13", "never_predicted"}
    rows = list(csv.DictReader(Path("metrics/confusion.csv").open()))
    assert len(rows) == 2 * NUM_CLASSES**2 and set(rows[0]) == {"model", "actual", "predicted", "share"}
    assert Path("reports/samples/target_val.png").is_file()
    # Predictions of `dacs` only, as Cityscapes label ids (values from the 19 classes' ids).
    labels = sorted(Path("predictions/dacs/labelIds").glob("*.png"))
    frames = [f"{c}_000000_000019.png" for c in ("frankfurt", "lindau", "munster")] + [
        "frankfurt_000001_000019.png"
    ]
    assert [p.name for p in labels] == sorted(frames) and not Path("predictions/also").exists()
    values = set(np.unique(np.concatenate([np.asarray(Image.open(p)).ravel() for p in labels])))
    assert values <= {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}
    # The DVC plot template renders the confusion data (what `dvc plots show` does with it).
    data = [{**row, "rev": "workspace"} for row in rows]
    renderer = VegaRenderer(
        data,
        "confusion",
        template="confusion_share",
        template_dir=str(REPO / ".dvc/plots"),
        x="predicted",
        y="actual",
    )
    assert renderer.template.name == "confusion_share"  # the custom template, not a built-in fallback
    spec = renderer.get_filled_template()
    assert spec["data"]["values"][0]["share"] == rows[0]["share"]
    assert spec["spec"]["encoding"]["x"]["field"] == "predicted"
    assert spec["facet"]["row"]["field"] == "model"
    assert {r["actual"] for r in rows} == set(CLASS_NAMES)
