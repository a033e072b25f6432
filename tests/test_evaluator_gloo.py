"""BreastFROCEvaluator across real processes (a gloo process group on the CPU), and one real
``tools/train_net.py --eval-only --num-gpus 1`` run.

detectron2 v0.6's ``launch`` asserts CUDA as soon as it spawns workers, so the workers here are
started with ``torch.multiprocessing.spawn`` and set up as ``launch._distributed_worker`` does,
with the gloo backend in place of NCCL.
"""
import json
import os
import subprocess
import sys
import tempfile
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm

from breast_d2.engine import BreastCheckpointer, load_breast_config
from breast_d2.evaluation import BreastFROCEvaluator, compute_froc, merge_slice_detections
from breast_d2.evaluation.boxfit import BoxFitParams, fit_boxes
from breast_d2.evaluation.candidates import CandidateArrays
from breast_d2.evaluation.slices import ConvertedSlices
from breast_d2.fileio import jsonable, write_json_atomic
from helpers import QUICK, REPO, tool_path, write_converted_phantom
from test_evaluator import CASES, DETECTIONS, SIZE, SLICES

NAME = "breast_froc_evaluator_gloo_val"
BOOTSTRAP = 40
# test_evaluator's detections plus some that make the order of the gathered predictions matter:
# candidates of all three cases, each spread over slices that land in different ranks, and
# equal scores in different cases (0.6: an FP of "a" and the hit of "c"; 0.8 in "a" and "b").
GLOO_DETECTIONS = {
    **DETECTIONS,
    ("b", 6): [([20, 20, 36, 36], 0.8)],
    ("b", 7): [([20, 21, 36, 36], 0.5)],
    ("c", 1): [([5, 5, 20, 20], 0.6), ([40, 5, 50, 12], 0.3)],
    ("c", 2): [([6, 5, 20, 20], 0.55)],
    ("c", 9): [([30, 30, 40, 40], 0.8)],
}
FILES = ("froc.json", "froc.csv", "froc.png", "candidates.json", "detections.json")


def _dataset_dicts():
    return [
        {"file_name": f"{case}/{z:04d}.png", "height": SIZE, "width": SIZE,
         "image_id": i * SLICES + z, "case_id": case, "slice_index": z}
        for i, case in enumerate(sorted(CASES))
        for z in range(SLICES)
    ]


def _output(d):
    dets = GLOO_DETECTIONS.get((d["case_id"], d["slice_index"]), [])
    inst = Instances((SIZE, SIZE))
    inst.pred_boxes = Boxes(torch.tensor([b for b, _ in dets], dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor([s for _, s in dets], dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(dets), dtype=torch.int64)
    return {"instances": inst}


def _shard(dicts, rank, world_size):
    """Every ``world_size``-th slice from ``rank`` on, in an order of its own per rank: each
    process sees interleaved slices of every case and meets the cases in a different order."""
    part = dicts[rank::world_size]
    order = np.random.default_rng(rank).permutation(len(part))
    return [part[i] for i in order]


def _register(cases_json):
    DatasetCatalog.register(NAME, _dataset_dicts)
    MetadataCatalog.get(NAME).set(cases_json=cases_json, case_ids=sorted(CASES),
                                  evaluator_type="breast_froc", thing_classes=["mass"])


def _unregister():
    DatasetCatalog.pop(NAME)
    MetadataCatalog.pop(NAME)


def _evaluate(dicts, output_dir, distributed):
    """reset / process (batches of 2, as a test loader) / evaluate; returns evaluate()'s dict."""
    # The toy split has no converted slices for the box fit.
    evaluator = BreastFROCEvaluator(NAME, output_dir=output_dir, distributed=distributed,
                                    bootstrap=BOOTSTRAP, box_fit=BoxFitParams(enabled=False))
    evaluator.reset()
    for i in range(0, len(dicts), 2):
        batch = dicts[i : i + 2]
        evaluator.process(batch, [_output(d) for d in batch])
    return evaluator.evaluate()


def _worker(rank, world_size, init_file, cases_json, out_dir):
    """One rank: the process group as detectron2's launch sets it up, then its shard."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", world_size=world_size,
                            rank=rank, timeout=timedelta(seconds=120))
    try:
        # One machine: the local group holds every rank (launch._distributed_worker).
        assert comm._LOCAL_PROCESS_GROUP is None
        comm._LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))
        comm.synchronize()
        assert (comm.get_world_size(), comm.get_rank()) == (world_size, rank)
        assert comm.get_local_size() == world_size
        _register(cases_json)
        shard = _shard(_dataset_dicts(), rank, world_size)
        # Every rank writes to the same folder, as build_breast_evaluator's evaluators do.
        result = _evaluate(shard, os.path.join(out_dir, "inference"), distributed=True)
        write_json_atomic(os.path.join(out_dir, f"result_rank{rank}.json"),
                          {"result": result, "slices": [d["image_id"] for d in shard]})
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def cases_json():
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cases.json")
        other = {"case_id": "z_other_fold", "boxes": [[0, 0, 0, 5, 5, 5]]}  # not in this split
        cases = [{"case_id": c, "shape": [SIZE, SIZE, SLICES], "spacing": [1, 1, 1], "boxes": b}
                 for c, b in CASES.items()]
        write_json_atomic(path, {"cases": cases + [other]})
        yield path


@pytest.fixture(scope="module")
def single(cases_json):
    """The reference: every slice in one process, and its files."""
    out = os.path.join(os.path.dirname(cases_json), "single")
    _register(cases_json)
    try:
        result = _evaluate(_dataset_dicts(), out, distributed=False)
    finally:
        _unregister()
    return {"result": result, "files": {name: _read(out, name) for name in FILES}}


def _read(folder, name):
    with open(os.path.join(folder, name), "rb") as f:
        return f.read()


def _as_json(result):
    """evaluate()'s dict as JSON text: exact floats, and NaN equal to NaN."""
    return json.dumps(result, sort_keys=True)


def test_reference_is_not_trivial(single, cases_json):
    """The numbers depend on every shard: one rank's slices alone give other numbers."""
    froc = json.loads(single["files"]["froc.json"])
    assert froc["num_cases"] == 3 and froc["num_lesions"] == 2 and froc["num_candidates"] == 7
    assert froc["bootstrap"] == {"resamples": BOOTSTRAP, "seed": 0}
    assert froc["ci95"] is not None and froc["cpm"] > 0
    _register(cases_json)
    try:
        part = _evaluate(_shard(_dataset_dicts(), 0, 2), None, distributed=False)
        again = _evaluate(_dataset_dicts(), None, distributed=False)
    finally:
        _unregister()
    assert _as_json(part) != _as_json(single["result"])
    assert _as_json(again) == _as_json(single["result"])  # the fixed bootstrap seed


@pytest.mark.parametrize("world_size", [2, 3])
def test_real_processes_give_the_single_process_files(world_size, single, cases_json):
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world_size, os.path.join(out, "init"), cases_json, out),
                 nprocs=world_size, join=True)
        ranks = []
        for rank in range(world_size):
            with open(os.path.join(out, f"result_rank{rank}.json")) as f:
                ranks.append(json.load(f))
        seen = [r["slices"] for r in ranks]
        # Disjoint shards that together hold every slice once, none in the dataset's order.
        assert sorted(sum(seen, [])) == list(range(len(CASES) * SLICES))
        assert all(s != sorted(s) for s in seen)
        assert _as_json(ranks[0]["result"]) == _as_json(single["result"])
        assert all(r["result"] == {} for r in ranks[1:])  # only the main process reports
        inference = os.path.join(out, "inference")
        assert sorted(os.listdir(inference)) == sorted(FILES)
        for name in FILES:
            assert _read(inference, name) == single["files"][name], name


def test_eval_only_tool_with_one_gpu_runs_in_process_on_the_cpu():
    """``--num-gpus 1``: detectron2's launch calls main directly (no spawn, no CUDA check)."""
    with tempfile.TemporaryDirectory() as tmp:
        _, data = write_converted_phantom(tmp, 4, seed=5, matrix=64, num_folds=2, num_phases=3)
        out = os.path.join(tmp, "out")
        # A freshly built model saved by detectron2's checkpointer stands in for trained weights.
        model = build_model(load_breast_config(QUICK, ["MODEL.DEVICE", "cpu"]))
        BreastCheckpointer(model, save_dir=tmp).save("fresh")
        env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        cmd = [sys.executable, tool_path("train_net"), "--config-file", QUICK, "--num-gpus", "1",
               "--fold", "0", "--data", data, "--eval-only", "OUTPUT_DIR", out,
               "INPUT.BREAST_MASK.SOURCE", "gt", "MODEL.WEIGHTS", os.path.join(tmp, "fresh.pth")]
        proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "World size: 1" in proc.stdout + proc.stderr  # default_setup's log line
        inference = os.path.join(out, "fold0", "inference", "breast_fold0_val")
        with open(os.path.join(inference, "froc.json")) as f:
            froc = json.load(f)
        with open(os.path.join(data, "splits.json")) as f:
            val_cases = json.load(f)["folds"][0]["val"]
        with open(os.path.join(data, "cases.json")) as f:
            truth = [c for c in json.load(f)["cases"] if c["case_id"] in val_cases]
        with open(os.path.join(inference, "detections.json")) as f:
            detections = json.load(f)
        # froc.json holds the library's numbers on the detections the tool wrote (strict JSON):
        # merged, then (the default pipeline) fitted to the converted slices.
        merged = CandidateArrays.from_dicts(merge_slice_detections(detections))
        fitted, _ = fit_boxes(merged, ConvertedSlices(data, BoxFitParams().channel))
        ref = jsonable(compute_froc(fitted, truth, bootstrap=20))
    assert sorted(froc["case_ids"]) == sorted(val_cases) and froc["num_cases"] == len(val_cases)
    assert detections and froc["num_candidates"] > 0
    assert froc["merge"]["box_fit"]["enabled"] is True
    assert {k: froc[k] for k in ref} == ref
