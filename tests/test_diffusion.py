import math

import pytest
import torch
import torch.nn.functional as F

from models.diffusion import (
    DiffusionConfig,
    denoise,
    edm_loss,
    edm_sample,
    loss_weight,
    preconditioning,
    sigma_schedule,
)
from models.ldm_unet import UNet, UNetConfig

CFG = DiffusionConfig()
SMALL_UNET = UNetConfig(
    model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(), num_heads=1
)


def per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)


def network_for(denoiser, cfg: DiffusionConfig):
    """The raw network F whose preconditioned output D(x; sigma) is `denoiser(x, sigma)`.

    Inverts EDM eq. 7 using only what F receives: sigma = exp(4 c_noise), x = x_in / c_in.
    """

    def net(x_in, c_noise):
        sigma = (4 * c_noise).exp()  # (B,)
        c_skip, c_out, c_in, _ = preconditioning(sigma, cfg.sigma_data)
        x = x_in / per_sample(c_in)
        return (denoiser(x, sigma) - per_sample(c_skip) * x) / per_sample(c_out)

    return net


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed, dtype=torch.float32):
    return torch.randn(*shape, generator=generator(seed), dtype=dtype)


@pytest.fixture
def one_thread():
    """Run on one intra-op thread: these tiny models gain nothing from more, and on CPUs shared with
    other jobs the threads' barriers can stall a training loop ten-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_preconditioning_matches_edm_table_1_by_hand():
    sigma = torch.tensor([1.0, 2.0], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data=0.5)
    # sigma^2 + sigma_data^2 = 1.25 and 4.25
    expected = {
        "c_skip": [0.25 / 1.25, 0.25 / 4.25],
        "c_out": [0.5 / 1.25**0.5, 1.0 / 4.25**0.5],
        "c_in": [1 / 1.25**0.5, 1 / 4.25**0.5],
        "c_noise": [0.0, math.log(2.0) / 4],
        # lambda(sigma) = 1 / c_out^2: unit effective weight on the network output
        "lambda": [1.25 / 0.25, 4.25 / 1.0],
    }
    got = {
        "c_skip": c_skip, "c_out": c_out, "c_in": c_in, "c_noise": c_noise,
        "lambda": loss_weight(sigma, 0.5),
    }
    for name, values in expected.items():
        torch.testing.assert_close(got[name], torch.tensor(values, dtype=torch.float64), msg=name)


def test_denoise_feeds_the_network_c_in_x_and_c_noise():
    cfg = DiffusionConfig(sigma_data=0.5)
    x = randn(2, 3, 4, 4, seed=0, dtype=torch.float64)
    sigma = torch.tensor([1.0, 2.0], dtype=torch.float64)
    seen = {}

    def net(x_in, c_noise):
        seen["x_in"], seen["c_noise"] = x_in, c_noise
        return torch.ones_like(x_in)

    out = denoise(net, x, sigma, cfg)
    c_skip, c_out, c_in, c_noise = preconditioning(sigma, 0.5)
    torch.testing.assert_close(seen["x_in"], per_sample(c_in) * x)
    torch.testing.assert_close(seen["c_noise"], c_noise)
    torch.testing.assert_close(out, per_sample(c_skip) * x + per_sample(c_out))


def test_loss_of_the_zero_network_is_one_for_data_of_std_sigma_data():
    """EDM's weighting gives E[loss] = 1 at every sigma when F = 0 and the data has variance sigma_data^2."""
    x0 = CFG.sigma_data * randn(4096, 1, 2, 2, seed=0)
    loss = edm_loss(lambda x_in, c_noise: torch.zeros_like(x_in), x0, CFG, generator(1))
    assert loss.shape == (4096,)
    assert loss.mean().item() == pytest.approx(1.0, abs=0.05)


def test_loss_draws_lognormal_sigmas():
    seen = []

    def net(x_in, c_noise):
        seen.append(c_noise)
        return torch.zeros_like(x_in)

    cfg = DiffusionConfig(p_mean=-0.4, p_std=0.8)
    edm_loss(net, torch.zeros(8192, 1, 1, 1), cfg, generator(0))
    log_sigma = 4 * seen[0]  # c_noise = ln(sigma) / 4
    assert log_sigma.mean().item() == pytest.approx(-0.4, abs=0.03)
    assert log_sigma.std().item() == pytest.approx(0.8, abs=0.03)


def test_loss_is_zero_for_the_ideal_denoiser_and_reproducible():
    x0 = randn(1, 3, 4, 4, seed=0, dtype=torch.float64)
    ideal = network_for(lambda x, sigma: x0.expand_as(x), CFG)
    batch = x0.expand(16, -1, -1, -1)
    assert edm_loss(ideal, batch, CFG, generator(0)).abs().max().item() < 1e-12

    zero = network_for(lambda x, sigma: torch.zeros_like(x), CFG)
    first = edm_loss(zero, batch, CFG, generator(0))
    assert torch.equal(first, edm_loss(zero, batch, CFG, generator(0)))
    assert not torch.equal(first, edm_loss(zero, batch, CFG, generator(1)))


def test_sigma_schedule_endpoints_and_monotonicity():
    sigmas = sigma_schedule(18, CFG)
    assert sigmas.shape == (19,)
    assert sigmas[0].item() == pytest.approx(80.0)
    assert sigmas[-2].item() == pytest.approx(0.002)
    assert sigmas[-1].item() == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all()
    midpoint = ((80.0 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7  # EDM eq. 5, i = 1 of N = 3
    assert sigma_schedule(3, CFG)[1].item() == pytest.approx(midpoint)
    assert sigma_schedule(1, CFG).tolist() == [80.0, 0.0]


def test_bad_steps_and_config_are_rejected():
    with pytest.raises(ValueError, match="^steps:"):
        sigma_schedule(0, CFG)
    with pytest.raises(ValueError, match="^sigma_max:"):
        DiffusionConfig(sigma_min=1.0, sigma_max=0.5)


def test_edm_noise_levels_are_tied_to_sigma_data_0_5():
    """EDM's p_mean/p_std were tuned for data of std 0.5: another sigma_data needs its own p_mean."""
    assert CFG.sigma_data == 0.5 and (CFG.p_mean, CFG.p_std) == (-1.2, 1.2)
    with pytest.raises(ValueError, match=r"^sigma_data: got 1.0 with EDM's p_mean -1.2 .* \(-0.507 is EDM's"):
        DiffusionConfig(sigma_data=1.0)
    DiffusionConfig(sigma_data=1.0, p_mean=-0.507)  # a deliberate choice is accepted


@pytest.mark.parametrize("steps", [1, 2, 18])
def test_sampler_recovers_the_single_data_point_of_an_ideal_denoiser(steps):
    x0 = randn(2, 3, 4, 4, seed=0, dtype=torch.float64)
    ideal = network_for(lambda x, sigma: x0, CFG)
    sample = edm_sample(ideal, randn(2, 3, 4, 4, seed=1, dtype=torch.float64), CFG, steps=steps)
    torch.testing.assert_close(sample, x0, rtol=0, atol=1e-10)


def test_sampler_is_second_order_on_gaussian_data():
    """Data N(0, s^2 I): D(x; sigma) = x s^2 / (s^2 + sigma^2), and the ODE solution is proportional
    to sqrt(s^2 + sigma^2), so x(0) = x(sigma_max) s / sqrt(s^2 + sigma_max^2). Heun's error falls
    about 4x per doubling of the steps (Euler's would fall 2x)."""
    s = 0.5
    net = network_for(lambda x, sigma: x * s**2 / (s**2 + per_sample(sigma) ** 2), CFG)
    noise = randn(2, 3, 4, 4, seed=0, dtype=torch.float64)
    exact = noise * CFG.sigma_max * s / math.sqrt(s**2 + CFG.sigma_max**2)
    errors = [
        ((edm_sample(net, noise, CFG, steps=steps) - exact).abs() / exact.abs()).max().item()
        for steps in (18, 36, 72)
    ]
    assert errors[0] < 0.1
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5


def test_sampler_is_deterministic_for_a_seed(one_thread):
    torch.manual_seed(0)
    net = UNet(SMALL_UNET, 4).eval()
    for param in net.parameters():  # non-zero output, so samples depend on the network
        torch.nn.init.normal_(param, std=0.1)
    first = edm_sample(net, randn(2, 4, 8, 8, seed=0), CFG, steps=4)
    again = edm_sample(net, randn(2, 4, 8, 8, seed=0), CFG, steps=4)
    other = edm_sample(net, randn(2, 4, 8, 8, seed=1), CFG, steps=4)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def train(net, latents, steps, batch, lr):
    """Adam on the EDM loss, resampling `batch` latents from the set each step."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    draws = generator(0)
    for _ in range(steps):
        index = torch.randint(len(latents), (batch,), generator=draws)
        loss = edm_loss(net, latents[index], CFG, draws).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_training_loss_falls_on_a_fixed_latent_set(one_thread):
    torch.manual_seed(0)
    net = UNet(SMALL_UNET, 4)
    # smooth, image-like latents: for white noise the zero network (D = c_skip x) is already the
    # best linear denoiser, and only memorising the set would lower the loss
    latents = F.interpolate(randn(4, 4, 2, 2, seed=1), size=(8, 8), mode="bilinear")
    latents = latents / latents.std() * CFG.sigma_data  # (4, 4, 8, 8), std sigma_data like normalised latents
    eval_batch = latents.repeat(8, 1, 1, 1)  # (32, 4, 8, 8)

    def fixed_loss():  # the same sigma and noise draws before and after training
        with torch.no_grad():
            return edm_loss(net, eval_batch, CFG, generator(2)).mean().item()

    before = fixed_loss()
    train(net, latents, steps=40, batch=8, lr=1e-2)
    assert fixed_loss() < 0.8 * before


def test_unet_trained_on_one_latent_generates_it(one_thread):
    torch.manual_seed(0)
    net = UNet(SMALL_UNET, 4)
    x0 = CFG.sigma_data * randn(1, 4, 8, 8, seed=1)
    train(net, x0, steps=150, batch=8, lr=1e-2)
    samples = edm_sample(net.eval(), randn(8, 4, 8, 8, seed=3), CFG)
    # unrelated samples of the same variance would be at twice the point's mean square
    squared_distance = (samples - x0).square().flatten(1).mean(1)  # (8,)
    assert squared_distance.max().item() < 0.25 * x0.square().mean().item()
