"""The backbone-family registry: detection, the noise process and denoiser hooks the loop calls, and
the doors that refuse a method or pipeline a family lacks by name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dreamdist import backbones
from dreamdist.backbones import (
    FAMILIES,
    FAMILY_NAMES,
    SHARED_MODULES,
    Backbone,
    SDBackbone,
    SDXLBackbone,
    detect_family,
    discover_families,
    family_class,
    family_of_pipeline,
)
from dreamdist.backbones.noise import DDPMNoise
from dreamdist.config import TrainConfig
from dreamdist.methods import method_names
from dreamdist.methods.custom_diffusion import CustomDiffusionConfig
from dreamdist.pipeline import make_pipeline
from dreamdist.testing import save_tiny_sdxl_pipeline
from dreamdist.training.loop import diffusion_loss, train


@pytest.fixture(scope="module")
def sdxl_model(tmp_path_factory):
    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("families_sdxl"), seed=0)


def test_the_registry_names_every_family_once():
    shipped = {"flux": "Flux.1", "sd3": "SD3", "sdxl": "SDXL", "sd": "SD 1.x/2.x"}
    assert {name: FAMILY_NAMES[name] for name in shipped} == shipped and len(FAMILY_NAMES) == len(FAMILIES)
    # detection order: Flux and SD3 before SDXL (their folders have a text_encoder_2 too), SD, the fallback, last
    assert [family.name for family in FAMILIES if family.name in shipped] == ["flux", "sd3", "sdxl", "sd"]
    assert FAMILIES[-1] is SDBackbone
    assert family_class("sdxl") is SDXLBackbone and family_class("sd") is SDBackbone
    with pytest.raises(ValueError, match=f"unknown backbone family 'sd4'; known: {', '.join(FAMILY_NAMES)}$"):
        family_class("sd4")
    for family in (SDXLBackbone, SDBackbone):  # every registered method trains on SD and SDXL
        assert sorted(family.methods) == method_names()
    assert family_class("flux").methods == ("dreamdistribution", "textual-inversion", "dreambooth")  # Flux.1


def test_families_are_found_in_their_modules_and_ordered_by_tier_then_name():
    """Every module of the package but the shared ones defines one family; no list names them."""
    package = Path(backbones.__file__).parent
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem not in (*SHARED_MODULES, "__init__"))
    assert sorted(family.__module__.rsplit(".", 1)[1] for family in FAMILIES) == modules
    assert list(FAMILIES) == sorted(FAMILIES, key=lambda family: (family.detection_tier, family.name))
    assert discover_families() == FAMILIES and all(getattr(backbones, f.__name__) is f for f in FAMILIES)
    assert Bare not in FAMILIES  # a Backbone subclass outside the package is no registered family


def test_detection_reads_the_model_index_or_the_sub_folders(tiny_model, sdxl_model, tmp_path):
    assert detect_family(str(tiny_model)) == "sd" and detect_family(str(sdxl_model)) == "sdxl"
    bare = tmp_path / "bare"
    (bare / "text_encoder_2").mkdir(parents=True)
    assert detect_family(str(bare)) == "sdxl"  # no model_index.json: the sub-folders tell
    assert detect_family(str(tmp_path / "nothing")) == "sd"  # the SD loader reports what is missing
    refiner = tmp_path / "refiner"
    refiner.mkdir()
    index = {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None]}
    (refiner / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(OSError, match="refiner"):
        detect_family(str(refiner))


def test_from_pretrained_dispatches_through_the_registry(tiny_model, sdxl_model):
    sd, sdxl = Backbone.from_pretrained(tiny_model, device="cpu"), Backbone.from_pretrained(sdxl_model, device="cpu")
    assert type(sd) is SDBackbone and sd.family == "sd" and sd.identity()["family"] == "sd"
    assert type(sdxl) is SDXLBackbone and sdxl.family == "sdxl" and sdxl.denoiser is sdxl.unet
    assert list(sdxl.named_text_encoders) == ["text_encoder", "text_encoder_2"]
    assert family_of_pipeline(make_pipeline(sdxl)) is SDXLBackbone
    assert family_of_pipeline(make_pipeline(sd)) is SDBackbone


def test_ddpm_timesteps_are_the_loops_draws(backbone):
    """The family's timestep draw is the one the loop made before the registry: randint on [low T, high T)."""
    total = backbone.scheduler.config.num_train_timesteps
    drawn = backbone.sample_timesteps(500, (0.25, 0.5), torch.Generator().manual_seed(3))
    expected = torch.randint(
        round(0.25 * total), round(0.5 * total), (500,), generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(drawn, expected)
    one = backbone.sample_timesteps(4, (0.5, 0.5), torch.Generator())  # an empty range still draws its low end
    assert torch.equal(one, torch.full((4,), round(0.5 * total)))


def test_diffusion_loss_uses_only_the_family_hooks(backbone, monkeypatch):
    """Noise process and denoiser come from the family: swap them and the loss follows."""
    latents, hidden = torch.randn(2, 4, 4, 4), backbone.encode_text(["a dog", "a cat"])
    calls = []

    class Constant(DDPMNoise):
        def add_noise(self, latents, noise, timesteps):
            calls.append("noisy")
            return torch.zeros_like(latents)

        def target(self, latents, noise, timesteps):
            calls.append("target")
            return torch.ones_like(latents)

    monkeypatch.setattr(SDBackbone, "noise_process", property(lambda self: Constant(self.scheduler)))
    monkeypatch.setattr(SDBackbone, "denoise", lambda self, noisy, t, features: noisy + 3.0)
    losses = diffusion_loss(backbone, latents, hidden, 1, torch.Generator().manual_seed(0))
    assert calls == ["noisy", "target"] and torch.allclose(losses, torch.full((1, 2), 4.0))


def test_a_method_the_family_lacks_is_refused_by_name_before_loading(refs, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(SDBackbone, "methods", ("dreamdistribution", "textual-inversion"))

    def no_load(*args, **kwargs):
        raise AssertionError("the backbone must not load")

    monkeypatch.setattr(Backbone, "from_pretrained", classmethod(no_load))
    config = TrainConfig(images=str(refs), out=str(tmp_path / "run"), model=str(tiny_model), method="custom-diffusion")
    with pytest.raises(
        ValueError, match=r"custom-diffusion is not available on SD 1.x/2.x backbones.*textual-inversion"
    ):
        train(config, CustomDiffusionConfig(class_noun="dog"))


def test_a_pipeline_kind_the_family_lacks_is_refused_by_name(backbone, monkeypatch):
    monkeypatch.setattr(SDBackbone, "pipelines", {"text2img": "StableDiffusionPipeline"})
    with pytest.raises(ValueError, match="--pipeline inpaint does not exist for SD 1.x/2.x backbones"):
        make_pipeline(backbone, kind="inpaint")


@dataclass
class Bare(Backbone):
    """A family that declares nothing beyond its name (what a new family starts from)."""

    name = "bare"
    display_name = "Bare"


def test_a_family_without_cross_attention_or_kohya_says_so():
    with pytest.raises(ValueError, match="Custom Diffusion .* Bare denoisers do not have"):
        Bare.is_cross_attention("transformer_blocks.0.attn.processor")
    with pytest.raises(ValueError, match="no kohya LoRA format for Bare"):
        Bare().kohya_name("transformer", "transformer_blocks.0.attn.to_q")
    assert Bare().bucket_step(1024) is None  # no aspect-ratio buckets unless the family asks
    with pytest.raises(ValueError, match="dreambooth is not available on Bare"):
        Bare.check_method("dreambooth")
