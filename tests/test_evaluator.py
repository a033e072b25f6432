"""BreastFROCEvaluator end to end on a tiny registered dataset with fake model outputs."""
import json
import os
import tempfile

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm

from breast_d2.config import add_breast_config
from breast_d2.evaluation import BreastFROCEvaluator, compute_froc, merge_slice_detections
from breast_d2.evaluation.boxfit import BoxFitParams

NAME = "breast_froc_evaluator_test_val"
# The toy split has boxes, no converted slices: the box fit (on by default) has no image to read.
NO_FIT = BoxFitParams(enabled=False)
SIZE = 64
CASES = {
    "a": [[10, 10, 2, 30, 30, 6]],  # detected on slices 2, 3 and 5 (gap bridged) + one FP
    "b": [],  # no mass, one FP
    "c": [[5, 5, 0, 20, 20, 3]],  # mass never detected: counts as missed
}
# (case, slice) -> [(box XYXY_ABS, score)]
DETECTIONS = {
    ("a", 2): [([10, 10, 30, 30], 0.9)],
    ("a", 3): [([10, 11, 30, 30], 0.8)],
    ("a", 5): [([11, 10, 30, 30], 0.7)],
    ("a", 10): [([40, 40, 50, 50], 0.6)],
    ("b", 1): [([0, 0, 8, 8], 0.95)],
}
SLICES = 12


def _dataset_dicts():
    dicts = []
    for case in sorted(CASES):
        for z in range(SLICES):
            dicts.append({"file_name": f"{case}/{z:04d}.png", "height": SIZE, "width": SIZE,
                          "image_id": len(dicts), "case_id": case, "slice_index": z})
    return dicts


def _output(d):
    dets = DETECTIONS.get((d["case_id"], d["slice_index"]), [])
    inst = Instances((SIZE, SIZE))
    inst.pred_boxes = Boxes(torch.tensor([b for b, _ in dets], dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([s for _, s in dets], dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(dets), dtype=torch.int64)
    return {"instances": inst}


@pytest.fixture
def dataset():
    with tempfile.TemporaryDirectory() as tmp:
        cases_json = os.path.join(tmp, "cases.json")
        other = {"case_id": "z_other_fold", "boxes": [[0, 0, 0, 5, 5, 5]]}  # not in this split
        with open(cases_json, "w") as f:
            json.dump({"cases": [{"case_id": c, "shape": [SIZE, SIZE, SLICES],
                                  "spacing": [1, 1, 1], "boxes": b} for c, b in CASES.items()]
                       + [other]}, f)
        DatasetCatalog.register(NAME, _dataset_dicts)
        MetadataCatalog.get(NAME).set(cases_json=cases_json, case_ids=sorted(CASES),
                                      evaluator_type="breast_froc", thing_classes=["mass"])
        try:
            yield tmp
        finally:
            DatasetCatalog.pop(NAME)
            MetadataCatalog.pop(NAME)


def _run(evaluator, dicts):
    evaluator.reset()
    for d in dicts:
        evaluator.process([d], [_output(d)])
    return evaluator.evaluate()


def test_process_evaluate_hand_computed(dataset):
    out = os.path.join(dataset, "inference")
    res = _run(BreastFROCEvaluator(NAME, output_dir=out, distributed=False, bootstrap=50,
                                   box_fit=NO_FIT),
               _dataset_dicts())
    froc = res["froc"]
    # Curve: 0.95 -> (1/3 FP, 0), 0.9 -> (1/3, 1/2), 0.6 -> (2/3, 1/2); 3 cases, 2 masses.
    assert froc["sens@0.125"] == 0.0 and froc["sens@0.25"] == 0.0
    assert froc["sens@0.5"] == 0.5 and froc["sens@1"] == 0.5 and froc["sens@3.4"] == 0.5
    assert froc["cpm"] == pytest.approx(2.5 / 7)
    assert sorted(os.listdir(out)) == ["candidates.json", "detections.json", "froc.csv",
                                       "froc.json", "froc.png"]
    with open(os.path.join(out, "candidates.json")) as f:
        cands = json.load(f)
    assert cands[0] == {"case_id": "a", "box": [10.0, 10.0, 2.0, 30.0, 30.0, 6.0],
                        "score": pytest.approx(0.9), "slices": 3}
    with open(os.path.join(out, "froc.json")) as f:
        saved = json.load(f)
    assert saved["num_cases"] == 3 and saved["num_lesions"] == 2
    assert saved["case_ids"] == ["a", "b", "c"]
    assert saved["threshold_at"]["3.4"] == pytest.approx(0.9)
    # Same numbers as the library on the detections the evaluator wrote.
    with open(os.path.join(out, "detections.json")) as f:
        dets = json.load(f)
    assert len(dets) == 5
    gt = [{"case_id": c, "boxes": b} for c, b in CASES.items()]
    ref = compute_froc(merge_slice_detections(dets), gt, bootstrap=50)
    assert ref["sensitivity_at"] == saved["sensitivity_at"] and ref["ci95"]["cpm"] == saved[
        "ci95"]["cpm"]


def test_cfg_keys_are_read(dataset):
    cfg = get_cfg()
    add_breast_config(cfg)
    cfg.TEST.FROC.SLICE_GAP = 0  # slice 5 no longer joins slices 2-3: candidate [2, 4) IoU 0.5
    cfg.TEST.FROC.BOOTSTRAP = 0
    cfg.TEST.FROC.BOX_FIT = False
    res = _run(BreastFROCEvaluator(NAME, cfg, distributed=False), _dataset_dicts())
    assert res["froc"]["cpm"] == 0.0
    res = _run(BreastFROCEvaluator(NAME, cfg, distributed=False, hit="center"), _dataset_dicts())
    assert res["froc"]["sens@3.4"] == 0.5


class _DummyModel(torch.nn.Module):
    def forward(self, batched_inputs):
        return [_output(d) for d in batched_inputs]


def test_inference_on_dataset(dataset):
    dicts = _dataset_dicts()
    loader = [dicts[i : i + 4] for i in range(0, len(dicts), 4)]
    evaluator = BreastFROCEvaluator(NAME, distributed=True, bootstrap=0, box_fit=NO_FIT)
    res = inference_on_dataset(_DummyModel(), loader, evaluator)
    assert res["froc"]["cpm"] == pytest.approx(2.5 / 7)


def test_two_processes_same_numbers(dataset, monkeypatch):
    dicts = _dataset_dicts()
    single = _run(BreastFROCEvaluator(NAME, distributed=False, bootstrap=30, box_fit=NO_FIT),
                  dicts)
    # Rank 0 gets every other image; rank 1 the rest in reverse order (what gather returns).
    ranks = [BreastFROCEvaluator(NAME, bootstrap=30, box_fit=NO_FIT) for _ in range(2)]
    for k, ev in enumerate(ranks):
        ev.reset()
        part = dicts[k::2][:: -1 if k else 1]
        for d in part:
            ev.process([d], [_output(d)])
    monkeypatch.setattr(comm, "synchronize", lambda: None)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [ranks[1]._predictions,
                                                             ranks[0]._predictions])
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    assert ranks[0].evaluate() == single
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert ranks[1].evaluate() == {}


def test_unknown_option_rejected(dataset):
    with pytest.raises(TypeError, match="bogus"):
        BreastFROCEvaluator(NAME, bogus=1)


def test_bad_froc_parameters_fail_at_construction():
    from breast_d2.evaluation import FROCInputError

    for kw in ({"iou_thresh": -1.0}, {"iou_thresh": float("nan")}, {"bootstrap": -5}):
        with pytest.raises(FROCInputError):
            BreastFROCEvaluator(NAME, distributed=False, box_fit=NO_FIT, **kw)
    with pytest.raises(ValueError, match="box_merge|BOX_MERGE"):
        BreastFROCEvaluator(NAME, distributed=False, box_fit=NO_FIT, box_merge="mean")


def test_box_fit_without_converted_slices_fails_at_construction(dataset):
    # The default pipeline fits boxes to the image: a split without data_root says so at once.
    with pytest.raises(ValueError, match="no 'data_root'.*TEST.FROC.BOX_FIT False"):
        BreastFROCEvaluator(NAME, distributed=False)
