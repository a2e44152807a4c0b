"""Tiny random feature models saved like real checkpoints, for tests and benchmarks (no download).

Each builder writes a folder that the extractors load by path exactly as they load a hub
snapshot: the same model classes, a saved image processor, and (CLIP) a real BPE tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from dreamdist.evaluation.inception import FIDInceptionV3
from dreamdist.tokenizers import build_clip_tokenizer

WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "cat",
    "dog",
    "red",
    "blue",
    "cathedral",
    "painting",
    "in",
    "snow",
    "at",
    "night",
    "style",
    "toy",
]
_PIL = int(transformers.__version__.split(".")[0]) >= 5  # v5 names the PIL processors *Pil


def _processor(name: str, **kwargs):
    cls = getattr(transformers, name + "Pil", None) if _PIL else None
    if cls is None:
        cls = getattr(transformers, name)
    return cls(**kwargs)


def save_tiny_clip(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A 2-layer CLIP (projection 16) with processor and tokenizer, saved into ``folder``."""
    folder = Path(folder)
    tokenizer = build_clip_tokenizer(WORDS, folder)
    torch.manual_seed(seed)
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": tokenizer.model_max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": 8,
    }
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    transformers.CLIPModel(config).eval().save_pretrained(folder)
    crop = {"height": image_size, "width": image_size}
    _processor("CLIPImageProcessor", size={"shortest_edge": image_size}, crop_size=crop).save_pretrained(folder)
    return folder


def save_tiny_dino(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A 2-layer ViT (DINO v1 layout, hidden 24) with a ViT image processor."""
    folder = Path(folder)
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=image_size,
        patch_size=8,
    )
    transformers.ViTModel(config, add_pooling_layer=False).eval().save_pretrained(folder)
    size = {"height": image_size, "width": image_size}
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    _processor("ViTImageProcessor", size=size, image_mean=mean, image_std=std).save_pretrained(folder)
    return folder


def save_tiny_dinov2(folder: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A 2-layer DINOv2 (hidden 32) with a BiT image processor (resize, center crop)."""
    folder = Path(folder)
    torch.manual_seed(seed)
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        image_size=image_size,
        patch_size=8,
    )
    transformers.Dinov2Model(config).eval().save_pretrained(folder)
    crop = {"height": image_size, "width": image_size}
    processor = _processor(
        "BitImageProcessor",
        size={"shortest_edge": image_size + image_size // 8},
        crop_size=crop,
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(folder)
    return folder


def random_fid_inception(seed: int = 0) -> FIDInceptionV3:
    """The full-size FID network with random weights and batch-norm statistics calibrated on noise.

    Calibration (one train-mode pass with cumulative averages) keeps the activations O(1)
    through all 94 convolutions, so random features are informative rather than ~0.
    """
    torch.manual_seed(seed)
    network = FIDInceptionV3()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
    network.train()
    with torch.no_grad():
        network(torch.rand(2, 3, 160, 160) * 2 - 1)  # smaller than 299 to stay cheap on a CPU
    return network.eval()


def save_random_fid_inception(path: str | Path, seed: int = 0) -> Path:
    """Write :func:`random_fid_inception` as a plain state dict ``.pth`` (the pt_inception layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value for key, value in random_fid_inception(seed).state_dict().items()}
    state["fc.weight"] = torch.zeros(1008, 2048)  # present in the real file, unused for features
    state["fc.bias"] = torch.zeros(1008)
    torch.save(state, path)
    return path
