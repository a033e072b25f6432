"""Tests of breast_d2.segmentation.data and train (tiny toy cohort in a temp dir)."""
import importlib.util
import os
import tempfile

import numpy as np
import pytest
import torch

from breast_d2.segmentation import (
    BreastSliceDataset,
    SegTrainConfig,
    build_model,
    evaluate_cases,
    labelled_slices,
    letterbox,
    load_checkpoint,
    load_fold,
    train_segmentation,
    unletterbox,
)
from breast_d2.segmentation.toy import make_toy_converted

torch.set_num_threads(2)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    train_ids, _ = load_fold(toy, 0)
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
    train_ids, val_ids = load_fold(toy, 0)
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
    more = train_segmentation(toy, 0, out, _cfg(epochs=3), os.path.join(out, "model_last.pth"), False)
    assert more["epoch"] == 3 and load_checkpoint(os.path.join(out, "model_last.pth"))["epoch"] == 3
    with pytest.raises(ValueError, match="cannot resume"):
        train_segmentation(toy, 1, out, _cfg(epochs=4), os.path.join(out, "model_last.pth"), False)


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


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cli(*args, capsys=None):
    with pytest.raises(SystemExit) as exc:
        _load_tool("train_breast_seg").main(list(args))
    err = capsys.readouterr().err
    return exc.value.code, err


def test_train_cli_errors(toy, capsys):
    code, err = _cli("--data", toy, "--fold", "0", "--out", os.path.join(toy, "x"), "--input-size", "50", capsys=capsys)
    assert code == 2 and err.strip().splitlines() == [
        "error: --input-size must be 0 or a multiple of 32, got 50"]
    code, err = _cli("--data", os.path.join(toy, "nope"), "--fold", "0", "--out", os.path.join(toy, "x"), capsys=capsys)
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1
    code, err = _cli("--data", toy, "--fold", "7", "--out", os.path.join(toy, "x"), capsys=capsys)
    assert code == 2 and "fold 7" in err
    code, err = _cli("--data", toy, "--fold", "0", "--out", os.path.join(toy, "x"), "--arch", "segnet", capsys=capsys)
    assert code == 2 and err.startswith("error: ")
    code, err = _cli("--data", toy, "--fold", "0", "--out", os.path.join(toy, "x"), "--resume", capsys=capsys)
    assert code == 2 and "no checkpoint" in err
