"""The phantom as a Duke TCIA download -> convert_to_coco -> train_net --fold 0 -> --eval-only.

The tree has localizers, T1s on the same and on another grid, every SeriesDescription family,
file numbers against slice position, a case only the series map resolves, and a partial download.
"""
import json
import os
import shutil
import tempfile

import pytest
import torch

from helpers import QUICK, load_tool


def _read(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def duke():
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "duke")
        assert load_tool("make_phantom").main(
            ["--layout", "duke", "--out", root, "--cases", "7", "--seed", "0", "--matrix", "64",
             "--slices", "16"]) == 0  # fmt: skip
        yield tmp, root


def test_duke_download_converts_trains_and_evaluates(duke):
    tmp, root = duke
    truth = {c["case_id"]: c for c in _read(os.path.join(root, "phantom.json"))["cases"]}
    manifest = [n for n in os.listdir(root) if n.startswith("manifest-")][0]
    images = os.path.join(root, manifest)
    # a partial download: the last patient's folder is missing, its box and map rows are not
    gone = sorted(truth)[-2]
    work = os.path.join(tmp, "download")
    shutil.copytree(images, os.path.join(work, manifest), symlinks=True)
    shutil.rmtree(os.path.join(work, manifest, "Duke-Breast-Cancer-MRI", gone))
    data = os.path.join(tmp, "coco")
    convert = load_tool("convert_to_coco")
    code = convert.main(["--images", os.path.join(work, manifest), "--boxes",
                         os.path.join(root, "Annotation_Boxes.xlsx"), "--series-map",
                         os.path.join(root, "Breast-Cancer-MRI-filepath_filename-mapping.xlsx"),
                         "--masks", os.path.join(root, "Segmentation_Masks_NRRD"),
                         "--out", data, "--folds", "2"])  # fmt: skip
    assert code == 0
    cases = {c["case_id"]: c for c in _read(os.path.join(data, "cases.json"))["cases"]}
    assert set(cases) == set(truth) - {gone}
    for case_id, case in cases.items():
        # the boxes land on the lesions in the position-sorted volume, whatever the file order
        assert case["boxes"] == truth[case_id]["boxes"], case_id
        assert all(p["source"] and "dyn" in p["description"].lower() or p["rule"] == "series map"
                   for p in case["phases"]), case_id  # fmt: skip
    with open(os.path.join(data, "convert.log")) as f:
        log = f.read()
    assert "partial download" in log and gone in log

    train_net = load_tool("train_net")
    out = os.path.join(tmp, "out")
    opts = ["OUTPUT_DIR", out, "INPUT.BREAST_MASK.ENABLED", "False", "TEST.FINAL_EVAL", "False"]
    args = train_net.argument_parser().parse_args(
        ["--config-file", QUICK, "--fold", "0", "--data", data, *opts])
    train_net.main(args)
    weights = os.path.join(out, "fold0", "model_final.pth")
    assert os.path.isfile(weights)
    args = train_net.argument_parser().parse_args(
        ["--config-file", QUICK, "--fold", "0", "--data", data, "--eval-only", *opts,
         "MODEL.WEIGHTS", weights])  # fmt: skip
    train_net.main(args)
    froc = _read(os.path.join(out, "fold0", "inference", "breast_fold0_val", "froc.json"))
    assert froc["num_cases"] == len(_read(os.path.join(data, "splits.json"))["folds"][0]["val"])
