import pytest
import torch

from models.ldm_unet import UNET_PRESETS, SelfAttention, UNet, UNetConfig

MICRO = UNetConfig(
    model_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,), num_heads=2
)
THREE_LEVELS = dict(model_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, num_heads=1)


def randomize(net: torch.nn.Module) -> None:
    """Replace the zero initialisation of residual branches so every path carries signal."""
    torch.manual_seed(0)
    for param in net.parameters():
        torch.nn.init.normal_(param, std=0.2)


@pytest.mark.parametrize(
    "cfg, channels, height, width",
    [
        (UNET_PRESETS["tiny"], 12, 16, 16),
        (MICRO, 4, 8, 24),
        (UNetConfig(**THREE_LEVELS, attention_resolutions=(1, 4)), 3, 12, 8),
        (
            UNetConfig(
                model_channels=16, channel_mult=(1, 2), num_res_blocks=2, attention_resolutions=(1,),
                num_head_channels=8, use_scale_shift_norm=False,
            ),
            1, 4, 4,
        ),
    ],
)
def test_output_shape_matches_input(cfg, channels, height, width):
    net = UNet(cfg, channels)
    randomize(net)
    out = net(torch.randn(2, channels, height, width), torch.randn(2))
    assert out.shape == (2, channels, height, width)
    assert torch.isfinite(out).all()


def test_output_is_zero_at_initialisation():
    """Zero-initialised output conv: D(x; sigma) starts as c_skip * x."""
    out = UNet(MICRO, 4)(torch.randn(2, 4, 8, 8), torch.randn(2))
    assert torch.equal(out, torch.zeros_like(out))


def test_gradients_reach_every_parameter():
    net = UNet(MICRO, 4)
    randomize(net)
    out = net(torch.randn(2, 4, 8, 8), torch.randn(2))
    (out * torch.randn_like(out)).sum().backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_output_depends_on_noise_level():
    net = UNet(MICRO, 4)
    randomize(net)
    x = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([-1.0, 1.0]))
    assert not torch.allclose(out[0], out[1])


def test_attention_resolutions_are_downsampling_factors():
    """Factor 2 on a 16x16 input: attention runs on 8x8 maps (level 1 and the middle block) only."""
    net = UNet(UNetConfig(**THREE_LEVELS, attention_resolutions=(2,)), 4)
    sizes = []
    for module in net.modules():
        if isinstance(module, SelfAttention):
            module.register_forward_hook(lambda mod, args, out: sizes.append(tuple(out.shape[-2:])))
    net(torch.randn(1, 4, 16, 16), torch.zeros(1))
    # level 1: one down block, two up blocks; the middle block at 4x4
    assert sorted(sizes) == [(4, 4), (8, 8), (8, 8), (8, 8)]


def test_ldm_preset_matches_rombach_parameter_count():
    """LDM-4 FFHQ / CelebA-HQ UNet on 3-channel latents: 274M parameters (Rombach et al. 2022)."""
    with torch.device("meta"):
        net = UNet(UNET_PRESETS["ldm"], 3)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(274e6, rel=0.005)


@pytest.mark.parametrize(
    "shape, noise_shape, match",
    [
        ((1, 4, 8, 9), (1,), "not divisible by 2"),
        ((1, 4, 7, 8), (1,), "not divisible by 2"),
        ((1, 3, 8, 8), (1,), r"shape \(B, 4, h, w\)"),
        ((2, 4, 8, 8), (1,), "noise_level"),
    ],
)
def test_bad_input_is_rejected(shape, noise_shape, match):
    with pytest.raises(ValueError, match=match):
        UNet(MICRO, 4)(torch.randn(shape), torch.zeros(noise_shape))


def test_bad_size_names_the_multiple():
    net = UNet(UNetConfig(**THREE_LEVELS, attention_resolutions=()), 4)
    with pytest.raises(ValueError, match="not divisible by 4"):
        net(torch.randn(1, 4, 8, 10), torch.zeros(1))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(model_channels=9), "model_channels"),
        (dict(channel_mult=(1, 2), attention_resolutions=(4,)), "attention_resolutions"),
        (dict(channel_mult=(1, 2), attention_resolutions=(3,)), "attention_resolutions"),
        (dict(model_channels=8, channel_mult=(1, 3), attention_resolutions=(), num_heads=5), "num_heads"),
        (dict(model_channels=40, num_head_channels=32), "num_head_channels"),
        (dict(channel_mult=()), "channel_mult"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        UNetConfig(**kwargs)
