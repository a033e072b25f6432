"""Tests of breast_d2.segmentation.data and train (tiny toy cohort in a temp dir)."""
import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from breast_d2.data.converted import read_cases, read_fold
from breast_d2.segmentation import (
    BreastSliceDataset,
    SegTrainConfig,
    build_model,
    evaluate_cases,
    labelled_slices,
    letterbox,
    load_checkpoint,
    train_segmentation,
    unletterbox,
)
from breast_d2.segmentation.data import has_gt_mask, split_by_gt_mask
from helpers import load_tool, make_toy_converted

torch.set_num_threads(2)
TINY = dict(encoder_depth=3, decoder_channels=[16, 8, 8])


def _cfg(**kw):
    base = dict(arch="unetplusplus", encoder="resnet18", epochs=2, batch_size=4, lr=0.05,
                label_every=2, input_size=32, model_kwargs=TINY)
    base.update(kw)
    return SegTrainConfig(**base)


@pytest.fixture(scope="module")
def toy():
    with tempfile.TemporaryDirectory() as d:
        make_toy_converted(d, num_cases=6, num_slices=8)
        yield d


def test_labelled_slices():
    assert labelled_slices(25, 10) == [5, 15]
    assert labelled_slices(3, 1) == [0, 1, 2]
    assert labelled_slices(4, 10) == []
    with pytest.raises(ValueError):
        labelled_slices(5, 0)


def test_letterbox_roundtrip():
    img = np.random.default_rng(0).integers(0, 255, (40, 64, 3), dtype=np.uint8)
    boxed, meta = letterbox(img, 32)
    assert boxed.shape == (32, 32, 3) and (meta.resized_h, meta.resized_w) == (20, 32)
    assert boxed[20:].max() == 0  # zero padding at the bottom
    assert unletterbox(np.ones((32, 32)), meta).shape == (40, 64)
    native, meta = letterbox(img, 0)
    assert native.shape == (64, 64, 3) and unletterbox(native[..., 0], meta).shape == (40, 64)
    with pytest.raises(ValueError):
        letterbox(img, 48)


def test_dataset_uses_one_slice_in_n_and_flips(toy):
    train_ids, _ = read_fold(toy, 0)
    ds = BreastSliceDataset(toy, train_ids, label_every=4, input_size=32, flip=False)
    assert ds.items == [(c, z) for c in train_ids for z in (2, 6)]
    image, target = ds[0]
    assert image.shape == (3, 32, 32) and target.shape == (1, 32, 32)
    assert 0 <= image.min() and image.max() <= 1 and set(target.unique().tolist()) <= {0.0, 1.0}
    ds.flip = True
    torch.manual_seed(0)
    flipped = {ds[0][0].numpy().tobytes() for _ in range(20)}
    assert len(flipped) == 2  # both orientations occur


def test_training_improves_dsc_and_checkpoint_format(toy):
    train_ids, val_ids = read_fold(toy, 0)
    torch.manual_seed(0)
    untrained = build_model("unetplusplus", "resnet18", **TINY)
    before = np.mean([m["dsc"] for m in evaluate_cases(untrained, toy, val_ids, 32).values()])
    out = os.path.join(toy, "run")
    result = train_segmentation(toy, 0, out, _cfg(), progress=False)
    assert result["epoch"] == 2
    assert result["best_dsc"] > before + 0.2, (before, result["history"])
    ckpt = load_checkpoint(os.path.join(out, "model_best.pth"))
    for key in ("arch", "encoder", "in_channels", "model", "fold", "train_cases", "epoch",
                "best_dsc", "optimizer", "input_size"):
        assert key in ckpt
    assert ckpt["train_cases"] == train_ids and ckpt["fold"] == 0 and ckpt["input_size"] == 32
    assert not set(ckpt["train_cases"]) & set(val_ids)
    assert os.path.isfile(os.path.join(out, "model_last.pth"))

    # resume continues the epoch count and keeps the history
    last = os.path.join(out, "model_last.pth")
    more = train_segmentation(toy, 0, out, _cfg(epochs=3), last, False)
    assert more["epoch"] == 3 and load_checkpoint(os.path.join(out, "model_last.pth"))["epoch"] == 3
    with pytest.raises(ValueError, match="cannot resume"):
        train_segmentation(toy, 1, out, _cfg(epochs=4), last, False)


def test_poly_lr_decays_to_zero_and_val_every_skips_validation(toy):
    out = os.path.join(toy, "poly")
    result = train_segmentation(toy, 0, out, _cfg(epochs=3, val_every=2), progress=False)
    assert [h["val_dsc"] is None for h in result["history"]] == [True, False, False]
    ckpt = load_checkpoint(os.path.join(out, "model_last.pth"))
    last_lr = ckpt["optimizer"]["param_groups"][0]["lr"]
    assert 0 < last_lr < 0.05 * 0.2  # last iteration: 0.05 * (1 / T) ** 0.9 of T iterations
    with pytest.raises(ValueError, match="lr_schedule"):
        train_segmentation(toy, 0, os.path.join(toy, "bad"), _cfg(lr_schedule="cosine"),
                           progress=False)


def _cli(*args, capsys=None):
    with pytest.raises(SystemExit) as exc:
        load_tool("train_breast_seg").main(list(args))
    err = capsys.readouterr().err
    return exc.value.code, err


def test_train_cli_errors(toy, capsys):
    x = os.path.join(toy, "x")
    code, err = _cli("--data", toy, "--fold", "0", "--out", x, "--input-size", "50", capsys=capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: --input-size must be 0 or a multiple of 32, got 50"]
    code, err = _cli("--data", os.path.join(toy, "nope"), "--fold", "0", "--out", x, capsys=capsys)
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    code, err = _cli("--data", toy, "--fold", "7", "--out", x, capsys=capsys)
    assert code == 2 and "fold 7" in err
    code, err = _cli("--data", toy, "--fold", "0", "--out", x, "--arch", "segnet", capsys=capsys)
    assert code == 2 and err.startswith("error: ")
    code, err = _cli("--data", toy, "--fold", "0", "--out", x, "--resume", capsys=capsys)
    assert code == 2 and "no checkpoint" in err


# ---- cohorts where only some cases have a ground-truth mask (Duke: ~100 of 922) -------------
def _partial_toy(root, unmasked):
    make_toy_converted(root, num_cases=6, num_slices=8, unmasked=unmasked)
    return root


def test_split_by_gt_mask_uses_cases_json_then_the_folder(tmp_path):
    root = _partial_toy(str(tmp_path), unmasked=["TOY0002", "TOY0003"])
    ids = [f"TOY{i:04d}" for i in range(6)]
    with_mask, without = split_by_gt_mask(root, ids)
    assert without == ["TOY0002", "TOY0003"] and with_mask == [c for c in ids if c not in without]
    cases = read_cases(root)
    assert has_gt_mask(root, "TOY0000", {"case_id": "TOY0000"})  # no key: the folder decides
    assert not has_gt_mask(root, "TOY0002", {"case_id": "TOY0002"})
    with pytest.raises(FileNotFoundError, match="TOY0003"):  # cases.json and disk disagree
        has_gt_mask(root, "TOY0003", {**cases["TOY0003"], "has_mask": True})


def test_training_uses_only_masked_cases(tmp_path, caplog):
    # fold 0: train TOY0001/3/5, val TOY0000/2/4
    root = _partial_toy(str(tmp_path), unmasked=["TOY0002", "TOY0003", "TOY0005"])
    out = os.path.join(root, "run")
    with caplog.at_level(logging.INFO, logger="breast_d2.segmentation.train"):
        result = train_segmentation(root, 0, out, _cfg(epochs=1), progress=False)
    assert any("1 of 3 training and 2 of 3 validation cases" in r.getMessage()
               for r in caplog.records)
    ckpt = load_checkpoint(os.path.join(out, "model_last.pth"))
    assert ckpt["train_cases"] == ["TOY0001"]  # the masked training cases only
    assert ckpt["val_cases"] == read_fold(root, 0)[1]  # every validation case of the fold
    assert np.isfinite(result["last_dsc"])  # validated on TOY0000 and TOY0004


def test_fold_without_masked_training_cases_is_an_error(tmp_path, capsys):
    root = _partial_toy(str(tmp_path), unmasked=["TOY0001", "TOY0003", "TOY0005"])
    with pytest.raises(ValueError, match="fold 0: none of its 3 training cases has a ground-truth"):
        train_segmentation(root, 0, os.path.join(root, "run"), _cfg(epochs=1), progress=False)
    code, err = _cli("--data", root, "--fold", "0", "--out", os.path.join(root, "x"),
                     "--encoder", "resnet18", "--input-size", "32", capsys=capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith(
        "error: fold 0: none of its 3 training cases")


def test_no_validation_masks_means_no_dsc_and_no_best(tmp_path):
    root = _partial_toy(str(tmp_path), unmasked=["TOY0000", "TOY0002", "TOY0004"])
    out = os.path.join(root, "run")
    result = train_segmentation(root, 0, out, _cfg(epochs=1), progress=False)
    assert np.isnan(result["last_dsc"]) and np.isnan(result["best_dsc"])
    assert os.path.isfile(os.path.join(out, "model_last.pth"))
    assert not os.path.exists(os.path.join(out, "model_best.pth"))
    assert json.load(open(os.path.join(out, "metrics.json")))[0]["val_dsc"] is None


def test_tool_writes_tensorboard_events_and_logs_the_eta(toy, capsys):
    out = os.path.join(toy, "tool_run")
    argv = ["--data", toy, "--fold", "0", "--out", out, "--encoder", "resnet18",
            "--encoder-depth", "3", "--decoder-channels", "16,8,8", "--input-size", "32",
            "--batch-size", "4", "--label-every", "2", "--lr", "0.05"]
    train = load_tool("train_breast_seg").main
    assert train(argv + ["--epochs", "1"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["epoch"] == 1
    epoch1 = os.path.join(toy, "epoch1.pth")
    shutil.copy(os.path.join(out, "model_last.pth"), epoch1)
    assert train(argv + ["--epochs", "2", "--resume"]) == 0
    # as if the run above had died after epoch 1: its events from epoch 2 on are replaced
    assert train(argv + ["--epochs", "3", "--resume", epoch1]) == 0
    assert len([n for n in os.listdir(out) if n.startswith("events.out.tfevents.")]) == 3

    with open(os.path.join(out, "log.txt")) as f:  # each run appended to it
        log = f.read()
    eta = r"val DSC [\d.]+, ([\d.]+) s, ETA (\d+):(\d\d):(\d\d)"
    assert len(re.findall(r"epoch 1/1: loss [\d.]+, " + eta, log)) == 1, log
    assert len(re.findall(r"epoch 2/2: loss [\d.]+, " + eta, log)) == 1, log
    found = re.search(r"epoch 2/3: loss [\d.]+, " + eta, log)
    seconds, h, m, s = (float(v) for v in found.groups())
    assert abs(h * 3600 + m * 60 + s - seconds) <= 1.1  # one epoch left, at this run's pace
    assert re.search(r"epoch 3/3: loss [\d.]+, " + eta, log).groups()[1:] == ("0", "00", "00")

    events = EventAccumulator(out)
    events.Reload()
    assert {"train/loss", "train/lr", "train/epoch_loss", "val/dsc"} <= set(
        events.Tags()["scalars"])
    # fold 0 trains on 3 cases x 4 labelled slices (8 slices, 1 in every 2): 3 batches of 4
    assert [e.step for e in events.Scalars("train/loss")] == list(range(9))
    assert [e.step for e in events.Scalars("val/dsc")] == [2, 5, 8]
    with open(os.path.join(out, "metrics.json")) as f:
        history = json.load(f)
    assert np.allclose([e.value for e in events.Scalars("val/dsc")],
                       [h["val_dsc"] for h in history], atol=1e-6)
    assert np.allclose([e.value for e in events.Scalars("train/epoch_loss")],
                       [h["loss"] for h in history], atol=1e-6)
    lrs = [e.value for e in events.Scalars("train/lr")]
    assert np.allclose(lrs, [0.05 * (1 - t / 3) ** 0.9 for t in range(3)]
                       + [0.05 * (1 - t / 9) ** 0.9 for t in range(3, 9)])  # poly, 3 then 9 its
