import pytest
import torch
import torch.nn.functional as F

from models.discriminator import DiscriminatorConfig, UNetDiscriminator

TINY = DiscriminatorConfig(ch=4, ch_mult=(1, 2, 2))


@pytest.mark.parametrize("height, width", [(64, 64), (32, 48)])
def test_output_shapes(height, width):
    disc = UNetDiscriminator(TINY)
    global_logits, pixel_logits = disc(torch.randn(2, 3, height, width))
    assert global_logits.shape == (2,)
    assert pixel_logits.shape == (2, 1, height, width)


@pytest.mark.parametrize("shape", [(1, 3, 36, 32), (1, 3, 32, 20), (1, 1, 32, 32)])
def test_bad_input_is_rejected(shape):
    with pytest.raises(ValueError, match="UNetDiscriminator"):
        UNetDiscriminator(TINY)(torch.randn(shape))


@pytest.mark.parametrize("ch_mult", [(), (1, 0)])
def test_bad_config_is_rejected(ch_mult):
    with pytest.raises(ValueError, match="ch_mult"):
        DiscriminatorConfig(ch_mult=ch_mult)


@pytest.mark.parametrize("spectral_norm", [True, False])
def test_gradients_reach_every_parameter(spectral_norm):
    disc = UNetDiscriminator(DiscriminatorConfig(ch=4, ch_mult=(1, 2), spectral_norm=spectral_norm))
    global_logits, pixel_logits = disc(torch.randn(2, 3, 16, 16))
    (global_logits.sum() + pixel_logits.sum()).backward()
    for name, param in disc.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_pixel_logits_depend_on_local_content():
    """The per-pixel head sees the full-resolution skip path: a local change moves nearby logits most."""
    torch.manual_seed(0)
    disc = UNetDiscriminator(DiscriminatorConfig(ch=4, ch_mult=(1, 2, 2), spectral_norm=False)).eval()
    x = torch.randn(1, 3, 32, 32)
    x_edit = x.clone()
    x_edit[..., :4, :4] += 3.0
    _, before = disc(x)
    _, after = disc(x_edit)
    change = (after - before).abs()[0, 0]  # (32, 32)
    assert change[:4, :4].mean() > change[-8:, -8:].mean()


def test_spectral_norm_makes_every_layer_1_lipschitz():
    disc = UNetDiscriminator(TINY)
    for _ in range(3):  # each training-mode forward runs one more power iteration
        disc(torch.randn(1, 3, 8, 8))
    layers = [m for m in disc.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 3 * 3 + 1 + 3 * 3 + 1  # 3 encoder and 3 decoder blocks, two heads
    for layer in layers:
        sigma = torch.linalg.matrix_norm(layer.weight.flatten(1), ord=2)  # (out, in * k * k)
        assert sigma.item() == pytest.approx(1.0, abs=2e-2)


@pytest.mark.parametrize("pool", ["sum", "mean"])
def test_global_head_pools_the_bottleneck(pool):
    disc = UNetDiscriminator(DiscriminatorConfig(ch=4, ch_mult=(1, 2), spectral_norm=False, global_pool=pool))
    x = torch.randn(2, 3, 16, 24)
    bottleneck = disc.encoder[1](disc.encoder[0](x))  # (2, 8, 4, 6)
    features = F.relu(bottleneck).flatten(2)  # (2, 8, 24)
    pooled = features.sum(-1) if pool == "sum" else features.sum(-1) / 24
    expected = pooled @ disc.global_head.weight[0] + disc.global_head.bias  # (2,)
    global_logits, _ = disc(x)
    torch.testing.assert_close(global_logits, expected)


def test_default_global_pool_is_mean():
    """loss.adv_weight is stated at a PatchGAN's per-logit scale (models/losses.py), which the global logit keeps
    across resolutions only with mean pooling."""
    assert DiscriminatorConfig().global_pool == "mean"
