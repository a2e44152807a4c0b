"""FID InceptionV3: architecture, safe weight loading, preprocessing (random weights, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open

from dreamdist.evaluation import inception
from dreamdist.evaluation.features import InceptionFeatures
from dreamdist.evaluation.tiny import save_random_fid_inception


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_fid_inception(tmp_path_factory.mktemp("inception") / "random_inception.pth")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((80, 96), (120, 70))]


def test_architecture_matches_torchvision_inception_v3_without_heads():
    network = inception.FIDInceptionV3()
    # torchvision documents 27,161,264 parameters for inception_v3 (aux head 3,326,696; fc 2,049,000)
    assert sum(p.numel() for p in network.parameters()) == 27_161_264 - 3_326_696 - 2_049_000
    state = network.state_dict()
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert network.Mixed_7c.max_pool and not network.Mixed_7b.max_pool  # the FID graph's quirk


def test_features_follow_pytorch_fid_preprocessing(weights, images):
    extractor = InceptionFeatures(weights, device="cpu")
    features = extractor(images)  # two sizes, resized one by one
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    assert features.std(dim=0).mean() > 0  # calibrated random weights: features vary with the image
    pixels = torch.from_numpy(np.array(images[1])).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
    pixels = F.interpolate(pixels, size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(extractor.network(pixels)[0], features[1], atol=1e-5)
    batch = torch.from_numpy(np.array(images[0]))[None].permute(0, 3, 1, 2)  # uint8 (1, 3, H, W)
    assert torch.allclose(extractor(batch)[0], features[0], atol=1e-5)


def test_provenance_and_safetensors_copy(weights, images, tmp_path):
    extractor = InceptionFeatures(weights, device="cpu")
    assert not extractor.standard_weights  # random weights do not carry the 6726825d hash
    assert extractor.info.weights == "sha256:" + inception.sha256_of_file(weights)
    copy = inception.convert_weights(weights, tmp_path / "inception.safetensors")
    with safe_open(str(copy), framework="pt") as handle:
        assert handle.metadata()["source_sha256"] == inception.sha256_of_file(weights)
    converted = InceptionFeatures(copy, device="cpu")
    assert converted.info.weights == extractor.info.weights  # same source checkpoint, same cache key
    assert torch.equal(converted(images[:1]), extractor(images[:1]))


def test_pickled_modules_are_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled object, not a state dict
    with pytest.raises(inception.InceptionWeightsError, match="weights_only=True"):
        inception.load_fid_inception(path)


def test_wrong_checkpoint_and_missing_file_errors(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"layer.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(inception.InceptionWeightsError, match="not an FID Inception checkpoint"):
        inception.load_fid_inception(path)
    with pytest.raises(inception.InceptionWeightsError, match="--inception-weights"):
        inception.load_fid_inception(tmp_path / "absent.pth")
