"""Feature extractors on tiny random models saved like real checkpoints, and the feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from safetensors import safe_open

from dreamdist.evaluation import cache, features, tiny


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "clip": tiny.save_tiny_clip(root / "clip"),
        "dino": tiny.save_tiny_dino(root / "dino"),
        "dinov2": tiny.save_tiny_dinov2(root / "dinov2"),
    }


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (64 + 8 * i, 80, 3), dtype=np.uint8)) for i in range(5)]


def processor_of(folder):
    backend = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}
    return transformers.AutoImageProcessor.from_pretrained(folder, **backend)


def pooled(output):
    """transformers 4 returns a tensor from get_*_features, 5 a model output."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_dino_and_dinov2_take_the_normalised_cls_token(models, images):
    pixels = processor_of(models["dino"])(images=images, return_tensors="pt")["pixel_values"]
    vit = transformers.ViTModel.from_pretrained(models["dino"], add_pooling_layer=False).eval()
    with torch.no_grad():
        expected = vit(pixel_values=pixels).last_hidden_state[:, 0]
    extractor = features.DINOFeatures(str(models["dino"]), device="cpu")
    assert extractor.info.dim == 24 and extractor.info.kind == "dino"
    assert torch.allclose(extractor(images), expected, atol=1e-6)

    pixels = processor_of(models["dinov2"])(images=images, return_tensors="pt")["pixel_values"]
    assert pixels.shape[-2:] == (32, 32)  # resized then center-cropped by the model's own processor
    dinov2 = transformers.Dinov2Model.from_pretrained(models["dinov2"]).eval()
    with torch.no_grad():
        hidden = dinov2(pixel_values=pixels).last_hidden_state  # (N, 1 + patches, d)
        expected = hidden[:, 0]
    assert torch.allclose(features.DINOv2Features(str(models["dinov2"]), device="cpu")(images), expected, atol=1e-6)


def test_clip_image_and_text_embeddings_are_the_projected_ones(models, images):
    model = transformers.CLIPModel.from_pretrained(models["clip"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(models["clip"])
    pixels = processor_of(models["clip"])(images=images, return_tensors="pt")["pixel_values"]
    prompts = ["a photo of a cat", "a red dog in snow at night"]
    tokens = tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected_images = pooled(model.get_image_features(pixel_values=pixels))
        expected_texts = pooled(model.get_text_features(**tokens))
    extractor = features.CLIPFeatures(str(models["clip"]), device="cpu")
    assert extractor.info.dim == 16
    assert torch.allclose(extractor(images), expected_images, atol=1e-6)
    assert torch.allclose(extractor.encode_text(prompts), expected_texts, atol=1e-6)


def test_one_input_contract_for_every_extractor(models, images):
    square = [im.resize((64, 64)) for im in images[:3]]
    batch = torch.from_numpy(np.stack([np.asarray(im) for im in square])).permute(0, 3, 1, 2)  # (3, 3, 64, 64)
    for extractor in (
        features.CLIPFeatures(str(models["clip"]), device="cpu"),
        features.DINOFeatures(str(models["dino"]), device="cpu"),
    ):
        from_pil = extractor(square)
        assert torch.equal(extractor(batch), from_pil)
        grey = extractor([square[0].convert("L")])  # any PIL mode is converted to RGB
        assert torch.allclose(grey, extractor([square[0].convert("L").convert("RGB")]))
        in_batches = features.extract_features(extractor, square, batch_size=2, progress=False)
        assert torch.allclose(in_batches, from_pil, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        features.as_pil_images(batch.float())
    with pytest.raises(ValueError, match="PIL image"):
        features.as_pil_images([np.zeros((8, 8, 3))])


def test_unavailable_weights_name_the_model_and_the_fix(tmp_path):
    with pytest.raises(features.FeatureModelError, match="nobody/no-such-dino.*--dino-model"):
        features.DINOFeatures("nobody/no-such-dino", local_files_only=True)
    with pytest.raises(features.FeatureModelError, match="does not exist.*--clip-model"):
        features.CLIPFeatures(str(tmp_path / "missing"), local_files_only=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(features.FeatureModelError, match="save_pretrained.*--dinov2-model"):
        features.DINOv2Features(str(tmp_path / "empty"))


def test_cache_stores_safetensors_and_keys_on_everything(models, images, tmp_path):
    extractor = features.DINOFeatures(str(models["dino"]), device="cpu")
    first, hit = cache.cached_features(extractor, images, "hash-a", tmp_path, progress=False)
    assert not hit
    (path,) = tmp_path.glob("dino-*.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        assert torch.equal(handle.get_tensor("features"), first)
        assert handle.metadata()["images"] == "hash-a"
    again, hit = cache.cached_features(extractor, images, "hash-a", tmp_path, progress=False)
    assert hit and torch.equal(again, first)
    info = extractor.info
    key = cache.cache_key(info, "hash-a")
    assert cache.cache_key(info, "hash-b") != key
    for change in ({"model_id": "other"}, {"weights": "commit:x"}, {"preprocessing": "{}"}):
        assert cache.cache_key(features.FeatureInfo(**{**info.__dict__, **change}), "hash-a") != key
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable feature cache"):
        recomputed, hit = cache.cached_features(extractor, images, "hash-a", tmp_path, progress=False)
    assert not hit and torch.equal(recomputed, first)


def test_hub_weights_are_fingerprinted_by_snapshot_commit(monkeypatch, tmp_path):
    import huggingface_hub

    snapshot = "/hf/models--org--model/snapshots/0123abcd/config.json"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: snapshot)
    assert features._weights_fingerprint("org/model", config=None) == "commit:0123abcd"
    (tmp_path / "model.safetensors").write_bytes(b"1")
    local = features._weights_fingerprint(str(tmp_path), config=None)
    (tmp_path / "model.safetensors").write_bytes(b"12")  # new weights: new fingerprint, new cache key
    assert local.startswith("files:") and features._weights_fingerprint(str(tmp_path), config=None) != local


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DREAMDIST_CACHE", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path / "features"
    monkeypatch.delenv("DREAMDIST_CACHE")
    assert cache.default_cache_dir().parts[-3:] == (".cache", "dreamdist", "features")
