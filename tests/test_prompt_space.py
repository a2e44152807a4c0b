"""Where the prompts live (METHODS.md §12): ``--prompt-space output`` learns rows of the text encoders'
output features at the slots (and the pooled row) instead of token vectors pushed through the encoders.
Tiny offline SD, SDXL, Flux, SD3 and Z-Image folders: only the rows learn, no encoder runs in a training step,
the features are the encoded template with the rows spliced in (also after a text edit), mixes with
input-space runs, resume, artifacts, export."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from dreamdist.api import interpret
from dreamdist.artifact import load_artifact
from dreamdist.backbones import Backbone
from dreamdist.config import GenerateConfig, TrainConfig
from dreamdist.generation import generate
from dreamdist.methods.dreamdistribution import DreamDistribution, artifact_features
from dreamdist.prompt_distribution import OutputTemplate, PromptTemplate
from dreamdist.sample_prompts import read_prompt_file
from dreamdist.testing import (
    example_config,
    save_tiny_flux_pipeline,
    save_tiny_pipeline,
    save_tiny_sd3_pipeline,
    save_tiny_sdxl_pipeline,
    write_images,
)
from dreamdist.training.loop import train
from test_zimage import save_tiny_zimage_pipeline

K, M = 3, 2
BUILDERS = {
    "sd": save_tiny_pipeline,
    "sdxl": save_tiny_sdxl_pipeline,
    "flux": save_tiny_flux_pipeline,
    "sd3": save_tiny_sd3_pipeline,
    "zimage": save_tiny_zimage_pipeline,
}
POOLED = {"sd": False, "sdxl": True, "flux": True, "sd3": True, "zimage": False}  # a pooled vector: one more row
SLOTS = {
    "sd": M,
    "sdxl": M,
    "flux": M,
    "sd3": 2 * M,
    "zimage": M,
}  # SD3: the slots in the CLIP block and in the T5 block


def output_config(**options):
    return example_config(
        "dreamdistribution", num_prompts=K, num_tokens=M, num_samples=2, prompt_space="output", **options
    )


@pytest.fixture(scope="module", params=list(BUILDERS))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {name: build(tmp_path_factory.mktemp(f"tiny_{name}")) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def refs_dir(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("space_refs") / "refs", 4)


def run(refs_dir, model, out, method_config, **options):
    config = TrainConfig(
        images=str(refs_dir),
        out=str(out),
        model=str(model),
        method="dreamdistribution",
        steps=2,
        batch_size=2,
        progress=False,
        checkpoint_every=0,
        **options,
    )
    return train(config, method_config)


@pytest.fixture(scope="module")
def runs(models, refs_dir, tmp_path_factory):
    """One output-space run per family."""
    return {
        name: run(refs_dir, model, tmp_path_factory.mktemp(f"out_{name}") / "run", output_config())
        for name, model in models.items()
    }


def gen(out, artifacts, **kw):
    base = dict(out=str(out), artifacts=[str(a) for a in artifacts], num_images=2, num_inference_steps=2)
    return generate(GenerateConfig(**{**base, "progress": False, "seed": 3, "guidance_scale": 3.0, **kw})).images


def test_a_training_step_learns_only_the_rows_and_runs_no_encoder(family, models):
    backbone = Backbone.from_pretrained(models[family], device="cpu")
    method = DreamDistribution(output_config())
    data = SimpleNamespace(class_names=["refs"], multiclass=False, labels=torch.zeros(4, dtype=torch.long))
    method.setup(backbone, data, torch.Generator().manual_seed(0))
    template = method.templates[0]
    assert isinstance(template, OutputTemplate)
    rows = SLOTS[family] + POOLED[family]
    width = template.features.shape[-1]
    assert method.prompts.prompts().shape == (1, K, rows, width)  # R rows of the features' width D
    start = method.prompts.prompts().detach()
    assert torch.allclose(
        start.mean(dim=1)[0], template.initial_rows(), atol=0.1 * start.abs().max()
    )  # the template's rows
    assert float(start.std(dim=1).max()) > 0  # plus noise: the K prompts differ
    before = {name: [p.detach().clone() for p in e.parameters()] for name, e in backbone.named_text_encoders.items()}
    calls = []
    hooks = [e.register_forward_hook(lambda *_: calls.append(1)) for e in backbone.text_encoders]
    labels, indices = torch.zeros(2, dtype=torch.long), torch.arange(2)
    conditioning = method.condition(backbone, labels, torch.Generator().manual_seed(1), indices)
    for hook in hooks:
        hook.remove()
    assert calls == []  # no encoder in the step: nothing for a backward pass to go through
    (conditioning.hidden.pow(2).mean() + conditioning.aux_loss).backward()
    assert method.prompts.vectors.grad is not None and float(method.prompts.vectors.grad.abs().sum()) > 0
    for name, encoder in backbone.named_text_encoders.items():
        assert all(p.grad is None for p in encoder.parameters()), name
        assert all(torch.equal(p, q) for p, q in zip(encoder.parameters(), before[name])), name


def test_features_are_the_template_with_the_learned_rows_spliced_in(family, models, runs):
    backbone = Backbone.from_pretrained(models[family], device="cpu")
    artifact = load_artifact(runs[family])
    assert artifact.meta["method_config"]["prompt_space"] == "output"  # the artifact records it
    vectors = artifact.tensors["vectors"][0]  # (K, R, D)
    template = OutputTemplate.build(backbone, M, "", "")
    rows = template.rows
    assert vectors.shape == (K, SLOTS[family] + POOLED[family], template.features.shape[-1])
    if POOLED[family]:
        assert int(rows[-1]) == template.features.shape[0] - 1  # the pooled row, last in the features
    hidden = artifact_features(backbone, artifact, "", "", 0)  # (K, L', D)
    assert torch.allclose(hidden[:, rows], vectors, atol=1e-6)
    others = torch.ones(hidden.shape[1], dtype=torch.bool)
    others[rows] = False
    assert torch.allclose(hidden[:, others], template.features[others].float().expand(K, -1, -1), atol=1e-6)
    # a text edit re-encodes the words around the slots; the learned rows stay at the slots
    edited = artifact_features(backbone, artifact, "", "at night", 0)
    assert torch.allclose(edited[:, rows], vectors, atol=1e-6)
    night = OutputTemplate.build(backbone, M, "", "at night").features.float()
    assert torch.allclose(edited[:, others], night[others].expand(K, -1, -1), atol=1e-6)
    assert not torch.allclose(edited, hidden)


def test_slots_are_where_the_input_space_puts_the_learned_tokens(family, models):
    """Changing the slot tokens changes the features most at ``feature_slots`` (the residual stream carries
    each token's own input to its position)."""
    backbone = Backbone.from_pretrained(models[family], device="cpu")
    template = PromptTemplate.build(backbone, M, "a photo of", "")
    slots = backbone.feature_slots(template, M)
    vectors = torch.randn(1, M, backbone.token_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        zero = backbone.split_features(backbone.encode_soft_prompts(torch.zeros_like(vectors), template)[0])[0][0]
        other = backbone.split_features(backbone.encode_soft_prompts(vectors, template)[0])[0][0]
    change = (zero - other).norm(dim=-1)  # (L,) per position
    assert set(change.topk(len(slots)).indices.tolist()) == set(slots.tolist())


def test_a_suffix_edit_generates(family, runs, tmp_path):
    plain = gen(tmp_path / "plain", [runs[family]], num_images=1)[0]
    edited = gen(tmp_path / "edit", [runs[family]], num_images=1, suffix="at night")[0]
    assert plain.size == edited.size and plain.tobytes() != edited.tobytes()


def test_an_output_space_run_mixes_with_an_input_space_run(models, runs, refs_dir, tmp_path):
    """Both spaces end as features of the same shape, so their distributions compose."""
    small = example_config("dreamdistribution", num_prompts=K, num_tokens=M, num_samples=2)
    input_run = run(refs_dir, models["sd"], tmp_path / "input", small)
    assert load_artifact(input_run).meta["method_config"]["prompt_space"] == "input"
    for sampler in ("gaussian", "mixture"):
        images = gen(tmp_path / sampler, [runs["sd"], input_run], weights=[0.5, 0.5], sampler=sampler)
        assert len(images) == 2


def test_resume_refuses_another_prompt_space(models, refs_dir, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(
        images=str(refs_dir), model=str(models["sd"]), out=str(out), steps=1, batch_size=1, progress=False
    )
    config = dataclasses.replace(config, checkpoint_every=1)
    method = example_config("dreamdistribution", num_prompts=K, num_tokens=M)
    train(config, method)
    with pytest.raises(ValueError, match="--prompt-space: recorded .?input.?, now .?output"):
        train(dataclasses.replace(config, steps=2, resume=True), dataclasses.replace(method, prompt_space="output"))


def test_output_rows_export_and_refuse_word_interpretation(models, runs, tmp_path):
    from dreamdist.cli import main

    out = tmp_path / "prompts.safetensors"
    argv = ["sample-prompts", str(runs["flux"]), "--n", "2", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    tensors, _ = read_prompt_file(out)
    assert tensors["prompt_embeds"].shape[0] == 2 and "pooled_prompt_embeds" in tensors
    with pytest.raises(ValueError, match="output space.*no nearest vocabulary words"):
        interpret(runs["sd"], model=str(models["sd"]))


def test_an_unknown_prompt_space_is_refused():
    with pytest.raises(ValueError, match="--prompt-space must be one of input, output"):
        example_config("dreamdistribution", prompt_space="latent")
