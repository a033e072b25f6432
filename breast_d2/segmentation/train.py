"""Training loop for the breast-region models (SGD, resume, per-epoch validation DSC).

Writes into ``out_dir``: ``model_last.pth`` (every epoch), ``model_best.pth`` (highest mean
validation DSC so far), ``metrics.json`` (one entry per epoch) and TensorBoard event files
(``events.out.tfevents.*``: ``train/loss`` and ``train/lr`` per iteration, ``train/epoch_loss``
per epoch, ``val/dsc`` per validation; the step is the global iteration, as detectron2's). A
resumed run adds an event file and purges the older files' steps from the resumed epoch on.
Checkpoints are the dict of docs/DATA_FORMAT.md plus ``model_kwargs``, ``deep_supervision``,
``val_cases``, ``label_every``, ``val_dsc``, ``history`` and ``config``. Each epoch's log line
gives the ETA of the whole run (mean time per epoch so far x epochs left); tools/train_breast_seg.py
copies the log into ``out_dir/log.txt``.

Note: ``model_best.pth`` is chosen on the fold's validation cases, so its validation scores are
optimistic; the study evaluated the last epoch (``model_last.pth``).
"""
import dataclasses
import datetime
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.converted import read_cases, read_fold
from ..fileio import atomic_path, write_json_atomic
from .data import (
    BreastSliceDataset,
    case_num_slices,
    load_case_gt,
    load_case_images,
    split_by_gt_mask,
)
from .losses import deep_supervision_loss, get_loss
from .metrics import overlap_metrics
from .models import BreastSegModel, build_model
from .predict import load_checkpoint, predict_proba

__all__ = ["SegTrainConfig", "train_segmentation", "evaluate_cases"]

logger = logging.getLogger(__name__)


@dataclass
class SegTrainConfig:
    """Training settings; the defaults follow the study except where a CPU needs less.

    Attributes:
        arch: "unetplusplus" (BCE + Dice, deep supervision) or "unet" (BCE).
        encoder: SMP encoder name (random init).
        epochs: the study trained 50.
        batch_size: the study used 5.
        lr, momentum, weight_decay: SGD (the study gives no segmentation LR).
        lr_schedule: "poly" (lr * (1 - t / T) ** 0.9 per iteration t of T, the usual
            segmentation schedule; the last epochs settle instead of oscillating) or "constant".
        label_every: use 1 labelled slice in every N of each training case (study: 10).
        input_size: square letterbox side, multiple of 32 (0 = native size padded to 32).
        num_workers: DataLoader workers.
        val_stride: validate on every N-th slice of each validation case (1 = whole volume).
        val_every: validate every N epochs and after the last one; the epochs in between
            record no DSC (null in metrics.json) and cannot become model_best.
        seed: torch seed.
        device: torch device string.
        model_kwargs: extra SMP arguments (e.g. encoder_depth, decoder_channels).
        precise_bn: before each validation, recompute the BatchNorm running statistics with one
            no-grad pass over the training slices (detectron2's PreciseBN idea). Not in the
            study; it matters when an epoch has few iterations, where the exponential running
            averages lag the fast-changing weights and eval-mode outputs collapse.
    """

    arch: str = "unetplusplus"
    encoder: str = "resnet34"
    epochs: int = 50
    batch_size: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "poly"
    label_every: int = 10
    input_size: int = 256
    num_workers: int = 0
    val_stride: int = 1
    val_every: int = 1
    seed: int = 0
    device: str = "cpu"
    model_kwargs: Dict[str, Any] = field(default_factory=dict)
    precise_bn: bool = True


def evaluate_cases(
    model: torch.nn.Module,
    data_root: str,
    case_ids: Sequence[str],
    input_size: int,
    device: str = "cpu",
    slice_stride: int = 1,
    batch_size: int = 8,
) -> Dict[str, Dict[str, float]]:
    """Whole-volume DSC/Jaccard/SS of the thresholded (0.5) raw model output per case.

    Returns:
        ``{case_id: {"dsc", "jaccard", "ss"}}``.
    """
    was_training = model.training
    model.eval()
    out = {}
    cases = read_cases(data_root)
    for case_id in case_ids:
        zs, images = load_case_images(data_root, case_id, case_num_slices(cases, case_id))
        zs, images = zs[::slice_stride], images[::slice_stride]
        gt = load_case_gt(data_root, case_id, zs)
        prob = predict_proba(model, images, input_size, batch_size, device)
        out[case_id] = overlap_metrics(prob >= 0.5, gt)
    model.train(was_training)
    return out


def _save_atomic(obj: Dict[str, Any], path: str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _checkpoint(
    model: BreastSegModel, optimizer, cfg: SegTrainConfig, fold: int, train_ids, val_ids,
    epoch: int, best_dsc: float, val_dsc: float, history: List[dict],
) -> Dict[str, Any]:
    return {
        "arch": cfg.arch,
        "encoder": cfg.encoder,
        "in_channels": 3,
        "model": model.state_dict(),
        "fold": int(fold),
        "train_cases": list(train_ids),
        "epoch": int(epoch),
        "best_dsc": float(best_dsc),
        "optimizer": optimizer.state_dict(),
        "input_size": int(cfg.input_size),
        "model_kwargs": dict(cfg.model_kwargs),
        "deep_supervision": model.deep_supervision,
        "val_cases": list(val_ids),
        "label_every": int(cfg.label_every),
        "val_dsc": float(val_dsc),
        "history": history,
        "config": dataclasses.asdict(cfg),
    }


def _save_epoch(out_dir: str, ckpt: Dict[str, Any], is_best: bool, history: List[dict]) -> None:
    """Atomically write model_last.pth, model_best.pth (if ``is_best``) and metrics.json."""
    _save_atomic(ckpt, os.path.join(out_dir, "model_last.pth"))
    if is_best:
        _save_atomic(ckpt, os.path.join(out_dir, "model_best.pth"))
    write_json_atomic(os.path.join(out_dir, "metrics.json"), history, indent=2)


def _check_resume(ckpt: Dict[str, Any], cfg: SegTrainConfig, fold: int, train_ids) -> None:
    theirs = (ckpt["arch"], ckpt["encoder"], ckpt.get("fold"), sorted(ckpt["train_cases"]))
    ours = (cfg.arch, cfg.encoder, int(fold), sorted(train_ids))
    if theirs != ours:
        raise ValueError(
            f"cannot resume: checkpoint (arch, encoder, fold) = {theirs[:3]} vs requested "
            f"{ours[:3]}" + ("" if theirs[3] == ours[3] else ", different training cases")
        )


def _masked_fold(data_root: str, fold: int) -> Tuple[List[str], List[str], List[str]]:
    """``(train cases with a GT mask, val cases with one, all val cases)`` of ``fold``."""
    train_all, val_all = read_fold(data_root, fold)
    train_ids, _ = split_by_gt_mask(data_root, train_all)
    val_ids, _ = split_by_gt_mask(data_root, val_all)
    logger.info(
        "fold %d: %d of %d training and %d of %d validation cases have a ground-truth breast mask",
        fold, len(train_ids), len(train_all), len(val_ids), len(val_all),
    )
    if not train_ids:
        raise ValueError(
            f"fold {fold}: none of its {len(train_all)} training cases has a ground-truth breast "
            "mask (masks/gt/<case_id>/); convert the cohort with --masks"
        )
    if not val_ids:
        logger.warning("fold %d: no validation case has a ground-truth breast mask; no validation "
                       "DSC, and model_best.pth is not written", fold)  # fmt: skip
    return train_ids, val_ids, val_all


def _eta(epoch_seconds: Sequence[float], epochs_left: int) -> str:
    """``H:MM:SS`` left for ``epochs_left`` epochs at the mean of ``epoch_seconds`` so far."""
    seconds = float(np.mean(epoch_seconds)) * epochs_left if epoch_seconds else 0.0
    return str(datetime.timedelta(seconds=round(seconds)))


def _resume(
    path: str, cfg: SegTrainConfig, fold: int, train_ids, model: BreastSegModel, optimizer
) -> Tuple[int, float, List[dict]]:
    """Load ``path`` into ``model`` and ``optimizer``; ``(epoch, best DSC, history)`` so far."""
    ckpt = load_checkpoint(path)
    _check_resume(ckpt, cfg, fold, train_ids)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    start_epoch, best_dsc = int(ckpt["epoch"]), float(ckpt["best_dsc"])
    logger.info("resumed from %s at epoch %d (best DSC %.4f)", path, start_epoch, best_dsc)
    return start_epoch, best_dsc, list(ckpt.get("history", []))


def _train_epoch(
    model: BreastSegModel, loader: DataLoader, optimizer, loss_fn, cfg: SegTrainConfig,
    epoch: int, writer, progress: bool,
) -> List[float]:
    """One pass over ``loader`` (poly LR per iteration); the loss of each iteration.

    ``writer`` (a TensorBoard ``SummaryWriter``) gets ``train/loss`` and ``train/lr`` at the
    global iteration ``epoch * len(loader) + i``.
    """
    from tqdm import tqdm

    model.train()
    total_iters = max(1, cfg.epochs * len(loader))
    losses = []
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
    for i, (images, targets) in enumerate(bar):
        step = epoch * len(loader) + i
        if cfg.lr_schedule == "poly":
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * (1.0 - min(step, total_iters - 1) / total_iters) ** 0.9
        images, targets = images.to(cfg.device), targets.to(cfg.device)
        logits, aux = model.forward_with_aux(images)
        loss = deep_supervision_loss(logits, aux, targets, loss_fn)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        writer.add_scalar("train/loss", losses[-1], step)
        writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
    return losses


def _validate(
    model: BreastSegModel, loader: DataLoader, data_root: str, val_ids, cfg: SegTrainConfig
) -> float:
    """Mean validation DSC (NaN without validation cases), after PreciseBN if configured."""
    if cfg.precise_bn:
        with torch.no_grad():
            torch.optim.swa_utils.update_bn(loader, model, device=cfg.device)
    per_case = evaluate_cases(model, data_root, val_ids, cfg.input_size, cfg.device,
                              cfg.val_stride)  # fmt: skip
    dscs = [m["dsc"] for m in per_case.values()]
    return float(np.mean(dscs)) if dscs else float("nan")


def train_segmentation(
    data_root: str,
    fold: int,
    out_dir: str,
    cfg: SegTrainConfig,
    resume: Optional[str] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Train one fold's breast-region model and write checkpoints into ``out_dir``.

    Only cases with a ground-truth breast mask take part (:func:`~.data.split_by_gt_mask`): the
    checkpoint's ``train_cases`` are the fold's training cases that have one; ``val_cases`` are
    all of the fold's validation cases.

    Args:
        data_root: converted folder (slices, masks/gt, cases.json, splits.json).
        fold: fold index K; trains on its "train" cases, validates on its "val" cases.
        out_dir: output folder (created); checkpoints, metrics.json, TensorBoard events.
        cfg: :class:`SegTrainConfig`.
        resume: checkpoint to continue from (usually ``out_dir/model_last.pth``); it must be of
            the same arch, encoder, fold and training cases.
        progress: show a tqdm bar per epoch (postfix: running loss).

    Returns:
        ``{"epoch", "best_dsc", "last_dsc", "history"}`` (DSCs NaN without validation masks).

    Raises:
        ValueError: no training case of the fold has a ground-truth mask; a resume from another
            run; an unknown ``cfg.lr_schedule``.
    """
    from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when training

    if cfg.lr_schedule not in ("poly", "constant"):
        raise ValueError(f"lr_schedule must be 'poly' or 'constant', got {cfg.lr_schedule!r}")
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(cfg.seed)
    train_ids, val_ids, fold_val_ids = _masked_fold(data_root, fold)
    dataset = BreastSliceDataset(data_root, train_ids, cfg.label_every, cfg.input_size, flip=True)
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.num_workers,
        # a last batch of one image breaks BatchNorm at the 1x1 bottleneck of small inputs
        drop_last=len(dataset) % cfg.batch_size == 1 and len(dataset) > cfg.batch_size,
    )
    model = build_model(cfg.arch, cfg.encoder, 3, **cfg.model_kwargs).to(cfg.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    loss_fn = get_loss(cfg.arch)
    start_epoch, best_dsc, history = 0, -1.0, []
    if resume:
        start_epoch, best_dsc, history = _resume(resume, cfg, fold, train_ids, model, optimizer)
    logger.info(
        "fold %d: %s/%s, %d train cases (%d slices), %d val cases, epochs %d",
        fold, cfg.arch, cfg.encoder, len(train_ids), len(dataset), len(val_ids), cfg.epochs,
    )
    # A resumed run drops the steps that an interrupted run logged after its last checkpoint.
    writer = SummaryWriter(out_dir, purge_step=start_epoch * len(loader) if resume else None)
    val_dsc, epoch_seconds = float("nan"), []
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t0 = time.perf_counter()
            losses = _train_epoch(model, loader, optimizer, loss_fn, cfg, epoch, writer, progress)
            step = (epoch + 1) * len(loader) - 1  # the epoch's last iteration
            writer.add_scalar("train/epoch_loss", float(np.mean(losses)), step)
            validate = (epoch + 1) % max(1, cfg.val_every) == 0 or epoch + 1 == cfg.epochs
            val_dsc = float("nan")
            if validate:
                val_dsc = _validate(model, loader, data_root, val_ids, cfg)
                writer.add_scalar("val/dsc", val_dsc, step)
            is_best = validate and val_dsc > best_dsc
            best_dsc = max(best_dsc, val_dsc) if validate else best_dsc
            history.append(
                {
                    "epoch": epoch + 1,
                    "loss": float(np.mean(losses)),
                    "val_dsc": val_dsc if validate else None,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
            ckpt = _checkpoint(
                model, optimizer, cfg, fold, train_ids, fold_val_ids, epoch + 1, best_dsc,
                val_dsc, history,
            )
            _save_epoch(out_dir, ckpt, is_best, history)
            writer.flush()
            epoch_seconds.append(time.perf_counter() - t0)
            logger.info(
                "epoch %d/%d: loss %.4f%s, %.1f s, ETA %s",
                epoch + 1, cfg.epochs, history[-1]["loss"],
                f", val DSC {val_dsc:.4f}" if validate else "", epoch_seconds[-1],
                _eta(epoch_seconds, cfg.epochs - epoch - 1),
            )
    finally:
        writer.close()
    best = best_dsc if best_dsc >= 0 else float("nan")  # -1.0: no epoch was validated
    return {"epoch": len(history), "best_dsc": best, "last_dsc": val_dsc, "history": history}
