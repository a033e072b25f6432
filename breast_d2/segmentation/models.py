"""U-Net++ (with deep supervision) and U-Net breast-region models built on
segmentation-models-pytorch.

Deep supervision follows U-Net++ (Zhou et al. 2018) and the reference study: a 1x1 convolution
head on each nested node of the top (highest-resolution) decoder row, X0,1 ... X0,4 for a
depth-5 encoder. SMP's ``UnetPlusPlusDecoder.forward`` keeps those nodes in a local dict and
returns only the last one, so we do not copy its forward (it changes between SMP releases).
Instead :class:`BreastSegModel` registers a forward hook on each decoder block that *produces*
a top-row node and stores the block output for the current forward pass:

* SMP names decoder blocks ``x_{i}_{j}``; ``j`` is the resolution level (``j = D - 2`` is the
  highest-resolution skip, stride 2 for ResNet encoders, ``D`` = ``encoder_depth``) and ``i`` the
  position along the nested skip path, counted from the right. Hence the paper's
  ``X0,k`` (k = 1 .. D-1) is SMP's ``blocks["x_{D-1-k}_{D-2}"]``.
* SMP's model adds one more block (``x_0_{D-1}``, no skip) that upsamples X0,{D-1} to the input
  resolution, followed by its 3x3 ``segmentation_head``: that is the *main* output used at
  inference. The auxiliary heads produce logits at stride 2, bilinearly upsampled to the input
  size. The training loss averages the main output and all auxiliary outputs (see
  :func:`breast_d2.segmentation.losses.deep_supervision_loss`).

The SMP model's parameter names are unchanged (prefix ``net.``); auxiliary heads live in
``aux_heads`` and are ignored at inference.
"""
import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCHS", "BreastSegModel", "build_model", "build_model_from_checkpoint"]

logger = logging.getLogger(__name__)

ARCHS = ("unetplusplus", "unet")


def _last_conv_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"no Conv2d inside {type(module).__name__}")
    return convs[-1].out_channels


class BreastSegModel(nn.Module):
    """A one-channel SMP segmentation network, optionally with U-Net++ deep supervision.

    ``forward(x)`` returns the main logits ``[N, 1, H, W]`` (no sigmoid) for images
    ``x: [N, C, H, W]`` float with ``H, W`` divisible by ``2 ** encoder_depth``.
    ``forward_with_aux(x)`` also returns the auxiliary logits of X0,1 ... X0,{D-1}, each
    ``[N, 1, H, W]`` (empty list when deep supervision is off).
    """

    def __init__(self, net: nn.Module, arch: str, deep_supervision: bool):
        super().__init__()
        self.net = net
        self.arch = arch
        self.deep_supervision = bool(deep_supervision)
        self.aux_heads = nn.ModuleList()
        self.aux_node_names: List[str] = []
        self._taps: Dict[str, torch.Tensor] = {}
        if self.deep_supervision:
            if arch != "unetplusplus":
                raise ValueError("deep supervision needs the nested decoder of arch='unetplusplus'")
            self._attach_aux_heads()

    def _attach_aux_heads(self) -> None:
        blocks = self.net.decoder.blocks
        depth = len(self.net.encoder.out_channels) - 1  # encoder_depth D
        # paper X0,k (k = 1..D-1)  ==  SMP block "x_{D-1-k}_{D-2}"
        names = [f"x_{depth - 1 - k}_{depth - 2}" for k in range(1, depth)]
        missing = [n for n in names if n not in blocks]
        if missing:
            raise RuntimeError(
                f"SMP UnetPlusPlusDecoder has no blocks {missing}; SMP changed its layout"
            )
        for name in names:
            self.aux_heads.append(nn.Conv2d(_last_conv_channels(blocks[name]), 1, kernel_size=1))
            blocks[name].register_forward_hook(self._make_tap(name))
        self.aux_node_names = names

    def _make_tap(self, name: str):
        def tap(_module, _inputs, output):
            self._taps[name] = output

        return tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, _ = self.forward_with_aux(x, need_aux=False)
        return logits

    def forward_with_aux(
        self, x: torch.Tensor, need_aux: bool = True
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Main logits ``[N, 1, H, W]`` and auxiliary logits (list of ``[N, 1, H, W]``)."""
        self._taps = {}
        try:
            logits = self.net(x)
            if not (need_aux and self.deep_supervision):
                return logits, []
            size = logits.shape[-2:]
            aux = []
            for name, head in zip(self.aux_node_names, self.aux_heads):
                out = head(self._taps[name])
                aux.append(F.interpolate(out, size=size, mode="bilinear", align_corners=False))
            return logits, aux
        finally:
            self._taps = {}  # never keep activations alive between calls


def build_model(
    arch: str = "unetplusplus",
    encoder: str = "resnet34",
    in_channels: int = 3,
    deep_supervision: Optional[bool] = None,
    **smp_kwargs: Any,
) -> BreastSegModel:
    """Build a randomly initialised one-channel breast-region model.

    Args:
        arch: "unetplusplus" or "unet".
        encoder: SMP encoder name, e.g. "resnet34" (weights are never downloaded).
        in_channels: input channels (3 for the converted slices: post1, post1-pre, pre).
        deep_supervision: auxiliary heads on X0,1..X0,{D-1}; None = True for U-Net++ (the study),
            False for U-Net.
        **smp_kwargs: passed to the SMP class, e.g. ``encoder_depth=3,
            decoder_channels=(32, 16, 8)`` for tiny test models.

    Returns:
        BreastSegModel.
    """
    import segmentation_models_pytorch as smp

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if deep_supervision is None:
        deep_supervision = arch == "unetplusplus"
    cls = smp.UnetPlusPlus if arch == "unetplusplus" else smp.Unet
    smp_kwargs = dict(smp_kwargs)
    if "decoder_channels" in smp_kwargs:
        smp_kwargs["decoder_channels"] = list(smp_kwargs["decoder_channels"])
    net = cls(
        encoder_name=encoder,
        encoder_weights=None,  # no downloads; the study trained from scratch as well
        in_channels=in_channels,
        classes=1,
        **smp_kwargs,
    )
    return BreastSegModel(net, arch=arch, deep_supervision=deep_supervision)


def build_model_from_checkpoint(ckpt: Dict[str, Any]) -> BreastSegModel:
    """Rebuild the model of a checkpoint dict (docs/DATA_FORMAT.md) and load its weights."""
    model = build_model(
        arch=ckpt["arch"],
        encoder=ckpt["encoder"],
        in_channels=int(ckpt.get("in_channels", 3)),
        deep_supervision=ckpt.get("deep_supervision"),
        **ckpt.get("model_kwargs", {}),
    )
    model.load_state_dict(ckpt["model"])
    return model
