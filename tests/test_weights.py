"""The weights policy and the FID/KID code paths, with random weights where torchvision and torch-fidelity look."""

import logging

import pytest
import torch
from fixtures_weights import ALEXNET_FILE, INCEPTION_FILE
from torch.utils.data import Dataset

from pipeline.measures.fidelity import FeatureBank, frechet_distance, kernel_inception_distance
from pipeline.measures.pretrained import WeightsUnavailable, inception_weights, load_inception, load_lpips, perceptual_network


def _images(seed: int, count: int = 6, size: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)


def test_lpips_loads_the_cached_backbone(pretrained_weights):
    net = load_lpips("alex")
    saved = torch.load(pretrained_weights / ALEXNET_FILE, weights_only=True)
    assert torch.equal(net.net.slice1[0].weight, saved["features.0.weight"])
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert net(x, x).abs().max() < 1e-6
    assert (net(x, y).flatten() > 0).all()


def test_lpips_without_weights_says_which_file_is_missing(missing_weights):
    with pytest.raises(WeightsUnavailable, match=str(missing_weights / ALEXNET_FILE)):
        load_lpips("alex")


def test_perceptual_network_modes(missing_weights, caplog):
    assert perceptual_network("off") == (None, "disabled by params")
    with caplog.at_level(logging.WARNING, logger="pipeline.measures.pretrained"):
        net, reason = perceptual_network("auto")
    assert net is None and ALEXNET_FILE in reason
    assert "perceptual loss disabled" in caplog.text
    with pytest.raises(WeightsUnavailable):
        perceptual_network("lpips")
    with pytest.raises(ValueError, match="mode"):
        perceptual_network("on")


def test_perceptual_network_auto_uses_available_weights(pretrained_weights):
    net, reason = perceptual_network("auto")
    assert reason is None and net is not None


def test_inception_weights_resolution(missing_weights, tmp_path):
    with pytest.raises(WeightsUnavailable, match=str(missing_weights / INCEPTION_FILE)):
        inception_weights()
    with pytest.raises(WeightsUnavailable, match="eval.inception_weights"):
        inception_weights(str(tmp_path / "absent.pth"))
    with pytest.raises(WeightsUnavailable, match="generation.inception_weights"):
        inception_weights(str(tmp_path / "absent.pth"), "generation.inception_weights")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a state dict")
    assert inception_weights(str(corrupt)) == corrupt
    with pytest.raises(WeightsUnavailable, match="not a torch-fidelity Inception-v3 state dict"):
        load_inception(str(corrupt))


class _Uint8Dataset(Dataset):
    """Items are bare uint8 (3, H, W) tensors, as torch-fidelity's calculate_metrics requires."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


@pytest.mark.parametrize("n", [10, 100])
def test_frechet_distance_equals_torch_fidelity(n):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    generator = torch.Generator().manual_seed(n)
    real = torch.randn(n, 64, generator=generator)
    fake = 1.3 * torch.randn(n + 3, 64, generator=generator) + 0.2  # N < D and N > D take different paths
    expected = fid_statistics_to_metric(fid_features_to_statistics(real), fid_features_to_statistics(fake), False)
    assert frechet_distance(real, fake) == pytest.approx(expected["frechet_inception_distance"], rel=1e-5)


def test_streamed_features_give_torch_fidelity_kid(pretrained_weights):
    import torch_fidelity

    real, fake = _images(0), _images(1)
    extractor = load_inception()
    banks = FeatureBank(extractor, torch.device("cpu")), FeatureBank(extractor, torch.device("cpu"))
    for bank, images in zip(banks, (real, fake)):
        bank.add(images[:4])  # two batches, as the evaluation streams them
        bank.add(images[4:])
    real_features, fake_features = banks[0].features(), banks[1].features()
    assert real_features.shape == (6, 2048)

    kid, kid_std, size = kernel_inception_distance(real_features, fake_features, subset_size=1000, subsets=10, seed=3)
    reference = torch_fidelity.calculate_metrics(
        input1=_Uint8Dataset(real), input2=_Uint8Dataset(fake), kid=True, cuda=False, save_cpu_ram=True,
        verbose=False, kid_subset_size=6, kid_subsets=10, rng_seed=3,
        feature_extractor_weights_path=str(pretrained_weights / INCEPTION_FILE))
    assert size == 6
    assert kid == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-5)
    assert kid_std == pytest.approx(reference["kernel_inception_distance_std"], rel=1e-5)


def test_fid_is_zero_for_identical_sets_and_positive_for_different_ones(pretrained_weights):
    bank = FeatureBank(load_inception(), torch.device("cpu"))
    bank.add(_images(0))
    bank.add(_images(1, size=48))
    features = bank.features()
    first, second = features[:6], features[6:]
    same = frechet_distance(first, first)
    different = frechet_distance(first, second)
    assert different > 0
    assert abs(same) < 1e-6 * different
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(first[:1], second)
