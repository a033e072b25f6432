"""Tests of breast_d2.segmentation.losses and the deep-supervision heads of models.py."""
import pytest
import torch
import torch.nn.functional as F

from breast_d2.segmentation import (
    bce_dice_loss,
    bce_loss,
    build_model,
    deep_supervision_loss,
    soft_dice,
)

torch.set_num_threads(2)
TINY = dict(encoder_depth=3, decoder_channels=(16, 8, 8))


def test_bce_matches_torch():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, target)
    assert torch.allclose(bce_loss(logits, target), expected)


def test_dice_and_bce_dice_extremes():
    target = torch.zeros(2, 1, 8, 8)
    target[:, :, 2:6, 2:6] = 1
    perfect = (target * 2 - 1) * 50  # logits far on the right side
    assert soft_dice(perfect, target).item() == pytest.approx(1.0, abs=1e-4)
    assert bce_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-4)
    wrong = -perfect
    assert soft_dice(wrong, target).item() < 0.05
    # empty target and empty prediction agree perfectly thanks to the smoothing term
    empty = soft_dice(torch.full((1, 1, 4, 4), -50.0), torch.zeros(1, 1, 4, 4))
    assert empty.item() == pytest.approx(1.0)


def test_deep_supervision_loss_is_the_mean():
    target = (torch.rand(1, 1, 8, 8) > 0.5).float()
    outs = [torch.randn(1, 1, 8, 8) for _ in range(3)]
    expected = sum(bce_dice_loss(o, target) for o in outs) / 3
    got = deep_supervision_loss(outs[0], outs[1:], target, bce_dice_loss)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_aux_heads_sit_on_top_row_nested_nodes():
    model = build_model("unetplusplus", "resnet18", **TINY)
    # encoder_depth 3: X0,1 = SMP x_1_1, X0,2 = SMP x_0_1 (both at stride 2)
    assert model.aux_node_names == ["x_1_1", "x_0_1"]
    seen = {}
    for name in model.aux_node_names:
        model.net.decoder.blocks[name].register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, o.shape[-2:])
        )
    logits, aux = model.forward_with_aux(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 1, 64, 64) and len(aux) == 2
    assert all(a.shape == (2, 1, 64, 64) for a in aux)
    assert set(seen.values()) == {torch.Size([32, 32])}
    assert model._taps == {}  # activations are not kept between calls
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_gradient_reaches_every_aux_head():
    torch.manual_seed(0)
    model = build_model("unetplusplus", "resnet18", **TINY)
    x = torch.randn(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    logits, aux = model.forward_with_aux(x)
    deep_supervision_loss(logits, aux, target, bce_dice_loss).backward()
    for head in model.aux_heads:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert model.net.segmentation_head[0].weight.grad.abs().sum() > 0


def test_unet_has_no_aux_heads():
    model = build_model("unet", "resnet18", **TINY)
    assert not model.deep_supervision and len(model.aux_heads) == 0
    logits, aux = model.forward_with_aux(torch.randn(1, 3, 64, 64))
    assert aux == [] and logits.shape == (1, 1, 64, 64)
    with pytest.raises(ValueError):
        build_model("unet", "resnet18", deep_supervision=True, **TINY)
    with pytest.raises(ValueError):
        build_model("segnet")
