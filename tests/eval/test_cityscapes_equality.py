"""Our IoU equals the official Cityscapes evaluation (``cityscapesscripts``) on the same prediction files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dacs_uda.data.synth import cityscapes_paths
from dacs_uda.evaluate import confusion_from_files, frame_name
from dacs_uda.labels import CLASS_NAMES, NUM_CLASSES, label_id_to_train_id_lut, train_id_to_label_id_lut
from dacs_uda.stages import evaluate as evaluate_stage
from tests.conftest import write_params
from tests.eval.conftest import N_VAL, NATIVE, RESIZE, eval_params

cs = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")

TO_TRAIN, TO_LABEL = label_id_to_train_id_lut(), train_id_to_label_id_lut()


def official_scores(predictions: list[Path], ground_truth: list[Path]) -> dict:
    """``evaluateImgLists`` of cityscapesscripts, offline and silent, on explicit file lists.

    Its module-level ``args`` is copied, not changed: no instance-level scores (they need
    ``*_instanceIds.png``, which the generated tree does not have), no JSON file, no printing.
    """
    args = cs.CArgs()
    args.__dict__.update(vars(cs.args))
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    return cs.evaluateImgLists([str(p) for p in predictions], [str(p) for p in ground_truth], args)


def assert_same_iou(ours: list[float], theirs: dict[str, float], abs_tol: float) -> None:
    for name, mine in zip(CLASS_NAMES, ours, strict=True):
        official = theirs[name]
        if math.isnan(official):
            assert math.isnan(mine), f"{name}: cityscapesscripts NaN (no GT, no prediction), ours {mine}"
        else:
            assert mine == pytest.approx(official, abs=abs_tol), name


def perturbed_predictions(gt_paths: list[Path], out: Path) -> list[Path]:
    """Prediction PNGs (Cityscapes label ids) made from the ground truth with every kind of error.

    Random wrong classes (false positives and negatives), a block predicted as a void label id (0, a
    miss with no false positive), ``train`` never predicted and absent from the GT (NaN in both), and
    ``truck`` predicted where the GT has none (IoU 0).
    """
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    paths = []
    for gt_path in gt_paths:
        train_ids = TO_TRAIN[np.asarray(Image.open(gt_path))].copy()
        assert not (train_ids == 16).any() and not (train_ids == 14).any(), "pick other classes"
        pred = np.where(train_ids == 255, rng.integers(0, NUM_CLASSES, train_ids.shape), train_ids)
        flip = rng.random(pred.shape) < 0.2
        pred[flip] = rng.integers(0, NUM_CLASSES, int(flip.sum()))
        pred[pred == 16] = 0
        label_ids = TO_LABEL[pred.astype(np.uint8)]
        label_ids[:6, :10] = 0  # void: a miss, no false positive
        label_ids[-5:, -7:] = TO_LABEL[14]  # truck, absent from the GT
        path = out / f"{frame_name(gt_path).replace('_gtFine_labelIds', '')}_pred.png"
        Image.fromarray(label_ids).save(path)
        paths.append(path)
    return paths


def test_per_class_iou_equals_cityscapesscripts(target_tree: Path, tmp_path: Path) -> None:
    ground_truth = [cityscapes_paths(target_tree, "val", i)[1] for i in range(N_VAL)]
    predictions = perturbed_predictions(ground_truth, tmp_path / "results")
    theirs = official_scores(predictions, ground_truth)

    matrix = confusion_from_files(list(zip(predictions, ground_truth, strict=True)))
    iou = matrix.iou().tolist()
    assert_same_iou(iou, theirs["classScores"], abs_tol=1e-12)
    assert math.isnan(iou[CLASS_NAMES.index("train")])
    assert iou[CLASS_NAMES.index("truck")] == 0.0
    assert int(matrix.missed.sum()) > 0  # the void block took the cityscapesscripts path
    assert matrix.miou() == pytest.approx(theirs["averageScoreClasses"], abs=1e-12)
    # Their confusion matrix (label ids) agrees with ours on the 19 classes.
    conf = np.asarray(theirs["confMatrix"], dtype=np.int64)
    label_ids = list(TO_LABEL[:NUM_CLASSES])
    assert (conf[np.ix_(label_ids, label_ids)] == matrix.matrix.numpy()).all()


def per_class_from_csv(path: Path, model: str) -> list[float]:
    rows = [r for r in csv.DictReader(path.open()) if r["model"] == model]
    return [float(r["iou"]) / 100 if r["iou"] else math.nan for r in rows]


@pytest.mark.parametrize("protocol", ["full", "official"])
def test_stage_metrics_equal_cityscapesscripts_on_written_predictions(workspace: Path, protocol: str) -> None:
    """The evaluate stage's per-class IoU = cityscapesscripts on the label-id PNGs the stage wrote.

    Under ``full`` the files are at the native label size and are scored against gtFine as it is;
    under ``official`` they are at the input size and scored against gtFine nearest-resized to it.
    """
    write_params(workspace, eval_params(protocol))
    assert evaluate_stage.main() == 0
    root = Path("data/raw/target")
    ground_truth = [cityscapes_paths(root, "val", i)[1] for i in range(N_VAL)]
    if protocol == "official":
        resized = workspace / "gt_official"
        resized.mkdir()
        for i, path in enumerate(ground_truth):
            Image.open(path).resize(RESIZE, Image.NEAREST).save(resized / path.name)
            ground_truth[i] = resized / path.name
    predictions = [Path("predictions/dacs/labelIds") / f"{frame_name(p)}.png" for p in ground_truth]
    predictions = [p.with_name(p.name.replace("_gtFine_labelIds", "")) for p in predictions]
    expected_size = NATIVE if protocol == "full" else RESIZE
    for pred in predictions:
        with Image.open(pred) as img:
            assert img.size == expected_size and img.mode == "L"
        with Image.open(Path("predictions/dacs/color") / pred.name) as img:
            assert img.size == expected_size and img.mode == "RGB"
    theirs = official_scores(predictions, ground_truth)
    ours = per_class_from_csv(Path("metrics/per_class_iou.csv"), "dacs")
    assert sum(0 < v < 1 for v in ours) >= 2, f"too few informative classes to compare: {ours}"
    assert_same_iou(ours, theirs["classScores"], abs_tol=5e-5)  # the CSV holds percentages to 2 decimals
    metrics = json.loads(Path("metrics/eval.json").read_text())
    assert metrics["dacs"]["mIoU"] == pytest.approx(100 * theirs["averageScoreClasses"], abs=0.005)
