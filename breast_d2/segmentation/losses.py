"""Segmentation losses of the reference study: BCE (U-Net) and BCE + Dice with deep supervision
(U-Net++).

All functions take logits (before the sigmoid) ``[N, 1, H, W]`` and binary float targets of
the same shape, and return a scalar tensor.
"""
import logging
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["bce_loss", "soft_dice", "bce_dice_loss", "deep_supervision_loss", "get_loss"]

logger = logging.getLogger(__name__)


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross entropy averaged over all pixels (study eq. 1)."""
    return F.binary_cross_entropy_with_logits(logits, target)


def soft_dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice coefficient per image, averaged over the batch.

    Args:
        logits: ``[N, 1, H, W]``.
        target: ``[N, 1, H, W]`` in {0, 1}.
        smooth: added to numerator and denominator so that an empty target and an empty
            prediction give a coefficient of 1 (and gradients stay finite).

    Returns:
        scalar in [0, 1].
    """
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    denom = prob.sum(1) + target.sum(1)
    return ((2.0 * inter + smooth) / (denom + smooth)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """U-Net++ loss (study eq. 2): ``0.5 * BCE + (1 - Dice)``, Dice per image over the batch.

    The ``1 -`` only shifts eq. 2 by a constant so that the loss is non-negative.
    """
    return 0.5 * bce_loss(logits, target) + (1.0 - soft_dice(logits, target))


def deep_supervision_loss(
    logits: torch.Tensor,
    aux_logits: Sequence[torch.Tensor],
    target: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Average ``loss_fn`` over the main output and every auxiliary (deep-supervision) output.

    Args:
        logits: main logits ``[N, 1, H, W]`` (SMP's full-resolution head, used at inference).
        aux_logits: logits of the nested nodes X0,1 ... X0,{D-1}, each ``[N, 1, H, W]``.
        target: ``[N, 1, H, W]`` in {0, 1}.
        loss_fn: per-output loss, e.g. :func:`bce_dice_loss`.

    Returns:
        scalar: ``mean(loss_fn(o, target) for o in [logits, *aux_logits])``.
    """
    outputs = [logits, *aux_logits]
    return torch.stack([loss_fn(o, target) for o in outputs]).mean()


def get_loss(arch: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The study's per-output loss for ``arch``: BCE + Dice for U-Net++, BCE for U-Net."""
    return bce_dice_loss if arch == "unetplusplus" else bce_loss
