"""Backbone: loading, the embeddings->features path, targets, identity checks."""

from __future__ import annotations

import pytest
import torch

from dreamdist.backbones import Backbone, BackboneMismatchError


@pytest.mark.parametrize("model", ["tiny_model", "tiny_model_v"])
def test_encode_from_embeddings_equals_text_encoder_forward(model, request):
    backbone = Backbone.from_pretrained(request.getfixturevalue(model), device="cpu")
    ids = backbone.tokenize(["a photo of a cathedral", "red dog at night in the snow", ""])
    reference = backbone.text_encoder(ids)
    hidden, pooled = backbone.encode_prompt_embeds(backbone.token_embedding(ids), backbone.eos_positions(ids))
    assert hidden.shape == reference.last_hidden_state.shape
    assert torch.equal(hidden, reference.last_hidden_state)
    assert torch.equal(pooled, reference.pooler_output)


def test_causal_mask_is_applied(backbone):
    """Changing a later token must not change earlier positions' features."""
    ids = backbone.tokenize(["a photo of a cat", "a photo of a dog"])
    hidden = backbone.encode_text(["a photo of a cat", "a photo of a dog"])
    differs = (ids[0] != ids[1]).nonzero()[0].item()
    assert torch.allclose(hidden[0, :differs], hidden[1, :differs])
    assert not torch.allclose(hidden[0, differs], hidden[1, differs])


def test_training_target_follows_prediction_type(backbone, tiny_model_v):
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 900])
    assert torch.equal(backbone.training_target(latents, noise, t), noise)
    vbackbone = Backbone.from_pretrained(tiny_model_v, device="cpu")
    alpha = vbackbone.scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - vbackbone.scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(vbackbone.training_target(latents, noise, t), alpha * noise - sigma * latents, atol=1e-6)


def test_identity_and_mismatch(backbone, other_model):
    other = Backbone.from_pretrained(other_model, device="cpu")
    backbone.check_compatible(backbone.identity(), backbone.probe_rows(), "self")  # no error
    with pytest.raises(BackboneMismatchError, match="token embeddings differ"):
        other.check_compatible(backbone.identity(), backbone.probe_rows(), "artifact")
    wrong = {**backbone.identity(), "token_dim": 768}
    with pytest.raises(BackboneMismatchError, match="token_dim"):
        backbone.check_compatible(wrong, None, "artifact")


def test_missing_or_pickle_only_checkpoint_is_a_clear_error(tmp_path, tiny_model):
    with pytest.raises(OSError, match="could not load a Stable Diffusion checkpoint"):
        Backbone.from_pretrained(tmp_path / "nothing", device="cpu")
    import shutil

    copy = tmp_path / "pickled"
    shutil.copytree(tiny_model, copy)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(copy, subfolder="unet")
    (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    unet.save_pretrained(copy / "unet", safe_serialization=False)
    with pytest.raises(OSError, match="could not load"):
        Backbone.from_pretrained(copy, device="cpu")
    loaded = Backbone.from_pretrained(copy, device="cpu", allow_pickle=True)
    assert torch.equal(loaded.unet.conv_in.weight, unet.conv_in.weight)
