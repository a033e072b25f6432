"""BreastMaskDatasetMapper: masking, alignment under flips, missing-mask errors, registration."""
import json
import os
import tempfile

import cv2
import numpy as np
import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from breast_d2.config import add_breast_config
from breast_d2.data import BreastMaskDatasetMapper, load_breast_json, register_breast_folds
from breast_d2.data.mapper import apply_mask
from breast_d2.segmentation.postprocess import dilate_mm

H, W = 48, 64
BREAST = (slice(4, 30), slice(6, 40))  # rows, cols of the breast mask
MASS_XYXY = [10, 8, 20, 16]  # inside the breast
ORGAN = (slice(36, 44), slice(50, 58))  # bright structure outside the breast


def _write_cohort(root):
    """A two-case converted folder (DATA_FORMAT.md layout) with one mass on slices 1-2."""
    images, annotations, cases = [], [], []
    for c, case_id in enumerate(["CASE_A", "CASE_B"]):
        os.makedirs(os.path.join(root, "slices", case_id))
        os.makedirs(os.path.join(root, "masks", "gt", case_id))
        for z in range(3):
            image = np.full((H, W, 3), 40, np.uint8)
            image[ORGAN] = 250
            if z > 0:
                x0, y0, x1, y1 = MASS_XYXY
                image[y0:y1, x0:x1] = 200
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": len(images) + 1, "category_id": 1,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                     "iscrowd": 0, "lesion_index": 0}
                )
            mask = np.zeros((H, W), np.uint8)
            mask[BREAST] = 255
            cv2.imwrite(os.path.join(root, "slices", case_id, f"{z:04d}.png"), image)
            cv2.imwrite(os.path.join(root, "masks", "gt", case_id, f"{z:04d}.png"), mask)
            images.append({"id": len(images) + 1, "file_name": f"slices/{case_id}/{z:04d}.png",
                           "height": H, "width": W, "case_id": case_id, "slice_index": z})
        cases.append({"case_id": case_id, "shape": [W, H, 3], "spacing": [1.0, 1.0, 1.4],
                      "boxes": [MASS_XYXY[:2] + [1] + MASS_XYXY[2:] + [3]]})
    for split, case_id in (("train", "CASE_A"), ("val", "CASE_B")):
        ids = {im["id"] for im in images if im["case_id"] == case_id}
        coco = {"images": [im for im in images if im["id"] in ids],
                "annotations": [a for a in annotations if a["image_id"] in ids],
                "categories": [{"id": 1, "name": "mass"}]}
        with open(os.path.join(root, f"fold0_{split}.json"), "w") as f:
            json.dump(coco, f)
    with open(os.path.join(root, "cases.json"), "w") as f:
        json.dump({"cases": cases}, f)
    with open(os.path.join(root, "splits.json"), "w") as f:
        json.dump({"num_folds": 1, "seed": 0,
                   "folds": [{"fold": 0, "train": ["CASE_A"], "val": ["CASE_B"]}]}, f)


@pytest.fixture(scope="module")
def cohort():
    with tempfile.TemporaryDirectory() as root:
        _write_cohort(root)
        names = register_breast_folds(root, prefix="maptest")
        yield root
        for name in names:
            DatasetCatalog.pop(name)
            MetadataCatalog.pop(name)


def _mapper(root, augmentations, is_train=True, **kwargs):
    return BreastMaskDatasetMapper(
        is_train=is_train, augmentations=augmentations, image_format="BGR",
        mask_enabled=True, mask_dir=os.path.join(root, "masks", "gt"), **kwargs
    )


def test_registration_keeps_case_and_slice(cohort):
    dicts = DatasetCatalog.get("maptest_fold0_train")
    assert [(d["case_id"], d["slice_index"]) for d in dicts[:3]] == [
        ("CASE_A", 0), ("CASE_A", 1), ("CASE_A", 2)
    ]
    ann = dicts[1]["annotations"][0]
    xyxy = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
    assert list(xyxy) == MASS_XYXY  # half-open edges survive COCO's XYWH
    meta = MetadataCatalog.get("maptest_fold0_val")
    assert meta.case_ids == ["CASE_B"] and meta.thing_classes == ["mass"]
    assert os.path.isfile(meta.cases_json)


def test_masking_zeroes_outside_breast(cohort):
    d = DatasetCatalog.get("maptest_fold0_train")[1]
    out = _mapper(cohort, [])(d)
    image = out["image"].numpy().transpose(1, 2, 0)
    assert image[ORGAN].max() == 0  # the enhancing organ is gone
    assert image[BREAST].min() > 0
    assert out["instances"].gt_boxes.tensor.tolist() == [MASS_XYXY]


def test_flip_keeps_mask_and_boxes_aligned(cohort):
    d = DatasetCatalog.get("maptest_fold0_train")[1]
    out = _mapper(cohort, [T.RandomFlip(prob=1.0, horizontal=True)])(d)
    mask = out["breast_mask"].numpy()
    assert mask[:, ::-1][BREAST].all() and mask.sum() == mask[:, ::-1][BREAST].size
    x0, y0, x1, y1 = out["instances"].gt_boxes.tensor[0].round().int().tolist()
    assert (x0, x1) == (W - MASS_XYXY[2], W - MASS_XYXY[0])
    assert mask[y0:y1, x0:x1].all()  # the flipped box is still inside the flipped mask
    image = out["image"].numpy().transpose(1, 2, 0)
    assert (image[mask == 0] == 0).all()
    assert image[y0:y1, x0:x1].min() == 200


def test_resize_keeps_mask_aligned(cohort):
    d = DatasetCatalog.get("maptest_fold0_train")[1]
    out = _mapper(cohort, [T.Resize((96, 128))])(d)
    mask = out["breast_mask"].numpy()
    assert mask.shape == (96, 128)
    box = out["instances"].gt_boxes.tensor[0].round().int().tolist()
    assert box == [2 * v for v in MASS_XYXY]
    assert mask[box[1]:box[3], box[0]:box[2]].all()


def test_missing_mask_names_case_and_slice(cohort, tmp_path):
    d = dict(DatasetCatalog.get("maptest_fold0_train")[2])
    mapper = _mapper(cohort, [])
    mapper.mask_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="case CASE_A slice 2"):
        mapper(d)


def test_test_mode_drops_annotations(cohort):
    d = DatasetCatalog.get("maptest_fold0_val")[1]
    out = _mapper(cohort, [], is_train=False)(d)
    assert "annotations" not in out and out["case_id"] == "CASE_B" and out["slice_index"] == 1


def test_from_config_uses_fold_masks(cohort):
    cfg = get_cfg()
    add_breast_config(cfg)
    cfg.DATASETS.BREAST_ROOT = cohort
    cfg.DATASETS.FOLD = 0
    cfg.INPUT.BREAST_MASK.ENABLED = True
    mapper = BreastMaskDatasetMapper(cfg, is_train=False)
    assert mapper.mask_dir == os.path.join(cohort, "masks", "fold0")
    cfg.INPUT.BREAST_MASK.SOURCE = "gt"
    assert BreastMaskDatasetMapper(cfg, True).mask_dir == os.path.join(cohort, "masks", "gt")


def test_mapper_dilation_uses_spacing():
    mask = np.zeros((21, 21), np.uint8)
    mask[10, 10] = 1
    grown = dilate_mm(mask, 4.0, spacing_xy=(2.0, 1.0))  # 2 px in x, 4 px in y
    assert grown[10, 8] and not grown[10, 7]
    assert grown[6, 10] and not grown[5, 10]


def test_mapper_dilates_with_the_case_spacing(cohort):
    d = DatasetCatalog.get("maptest_fold0_train")[1]
    mapper = _mapper(cohort, [], dilate_mm=2.0, spacing_by_case={"CASE_A": (2.0, 1.0)})
    mask = mapper(d)["breast_mask"].numpy()
    # 2 mm = 1 column (2 mm) or 2 rows (1 mm); a diagonal step is sqrt(2^2 + 1^2) > 2 mm
    want = np.zeros((H, W), bool)
    want[BREAST[0].start - 2 : BREAST[0].stop + 2, BREAST[1]] = True
    want[BREAST[0], BREAST[1].start - 1 : BREAST[1].stop + 1] = True
    assert (mask.astype(bool) == want).all()


def test_load_breast_json_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_to_coco"):
        load_breast_json(str(tmp_path / "fold0_train.json"), str(tmp_path))


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("reversed_view", [False, True])
def test_apply_mask_equals_multiplication(channels, reversed_view):
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, (17, 23, channels), dtype=np.uint8)
    if reversed_view:
        image = image[:, :, ::-1]  # what read_image(..., "BGR") returns
    mask = (rng.random((17, 23)) > 0.4).astype(np.uint8)
    np.testing.assert_array_equal(apply_mask(image, mask), image * mask[:, :, None])


def test_trainer_mapper_does_not_carry_the_mask(cohort):
    cfg = get_cfg()
    add_breast_config(cfg)
    cfg.DATASETS.BREAST_ROOT = cohort
    cfg.INPUT.BREAST_MASK.ENABLED = True
    cfg.INPUT.BREAST_MASK.SOURCE = "gt"
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (H,), W  # keep the slice's size
    out = BreastMaskDatasetMapper(cfg, True)(DatasetCatalog.get("maptest_fold0_train")[1])
    assert "breast_mask" not in out
    image = out["image"].numpy().transpose(1, 2, 0)
    assert image.shape == (H, W, 3)
    assert image[ORGAN].max() == 0 and image[BREAST].min() > 0  # masked all the same
