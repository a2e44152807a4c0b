"""Shared pieces of the weight-tuning methods (DreamBooth, Custom Diffusion, two-stage): trainable
state by name, LoRA adapters (peft, the diffusers way), and diffusers pipeline folders."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dreamdist.backbones import Backbone

PIPELINE_DIR = "pipeline"
KOHYA_FILE = "lora_kohya.safetensors"


def named_trainables(modules: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """``{"<module>.<param name>": parameter}`` of every parameter that requires grad, in a fixed order."""
    return {f"{prefix}.{n}": p for prefix, m in modules.items() for n, p in m.named_parameters() if p.requires_grad}


def state_of(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Checkpoint tensors (fp32, CPU copies) of named parameters."""
    return {name: p.detach().float().cpu().clone() for name, p in params.items()}


def load_state(params: dict[str, nn.Parameter], tensors: dict[str, torch.Tensor]) -> None:
    """Copy ``tensors`` into the named parameters; every name must be present."""
    missing = [name for name in params if name not in tensors]
    if missing:
        raise ValueError(
            f"the checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]!r}); it was written with "
            "other method options. Resume with the original options or start a new --out."
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])


def make_trainable(module: nn.Module) -> None:
    """Full fine-tuning: fp32 master weights (AdamW on fp16 weights would lose the updates), grads on."""
    module.to(torch.float32).requires_grad_(True)


def lora_config(rank: int, alpha: float, targets: list[str]):
    """A peft ``LoraConfig`` (the 'gaussian' init: A ~ N(0, 1/r), B = 0, so training starts at the base)."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise ImportError("--lora needs peft: pip install 'dreamdist[lora]' (or pip install peft)") from None
    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)


def add_lora(module: nn.Module, config, generator: torch.Generator | None) -> None:
    """Add a LoRA adapter the diffusers/transformers way (``module.add_adapter``).

    With a ``generator``, A is redrawn from it (N(0, 1/r), as peft's 'gaussian') so a seeded run
    is reproducible; adapter weights are kept fp32 whatever the frozen weights' dtype.
    """
    module.add_adapter(config)
    for name, p in module.named_parameters():
        if "lora_" not in name:
            continue
        p.data = p.data.float()
        if generator is not None and "lora_A" in name:
            p.data.copy_(torch.randn(p.shape, generator=generator) / config.r)


def lora_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """peft-format adapter weights of a module (keys without the adapter name)."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(module, save_embedding_layers=False)
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


def load_lora(module: nn.Module, config, tensors: dict[str, torch.Tensor]) -> None:
    """Add the adapter (if missing) and load peft-format weights into it."""
    from peft.utils import set_peft_model_state_dict

    if not getattr(module, "peft_config", None):
        add_lora(module, config, None)
    result = set_peft_model_state_dict(module, tensors)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(
            f"LoRA weights do not fit this model ({len(unexpected)} unexpected keys, e.g. {unexpected[0]})"
        )


def kohya_state(modules: dict[str, nn.Module], backbone: Backbone, alpha: float) -> dict[str, torch.Tensor]:
    """LoRA adapters in the kohya / A1111 / ComfyUI layout.

    Per adapted layer ``<prefix>_<module path with '_'>`` (the family's names, ``Backbone.kohya_name``):
    ``.lora_down.weight`` (peft's A, (r, in)), ``.lora_up.weight`` (B, (out, r)) and ``.alpha`` (a
    scalar; the scale is alpha / r).
    """
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for path, layer in module.named_modules():  # full module paths (text_model.encoder..., down_blocks...)
            if not hasattr(layer, "lora_A") or "default" not in layer.lora_A:
                continue
            stem = backbone.kohya_name(name, path)
            out[f"{stem}.lora_down.weight"] = layer.lora_A["default"].weight.detach().float().cpu().contiguous()
            out[f"{stem}.lora_up.weight"] = layer.lora_B["default"].weight.detach().float().cpu().contiguous()
            out[f"{stem}.alpha"] = torch.tensor(float(alpha))
    return out


def save_pipeline(backbone: Backbone, folder: Path) -> Path:
    """The backbone as a diffusers pipeline folder (the family's text-to-image pipeline)."""
    from dreamdist.pipeline import make_pipeline

    path = folder / PIPELINE_DIR
    make_pipeline(backbone).save_pretrained(str(path), safe_serialization=True)
    return path


def load_pipeline_weights(backbone: Backbone, folder: Path, modules: list[str]) -> None:
    """Copy the weights of ``modules`` (pipeline-module names: ``unet``, ``text_encoder``) from a saved
    pipeline folder into the backbone, keeping its device and dtype; each is read with the class of
    the backbone's own module. Tokens added to the saved tokenizer must already be in the backbone's
    (the caller installs them first)."""
    path = folder / PIPELINE_DIR
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{path} is missing: the artifact's fine-tuned weights live there; copy the whole run folder"
        )
    for name in modules:
        target = getattr(backbone, name)
        loaded = type(target).from_pretrained(str(path), subfolder=name, use_safetensors=True)
        target.load_state_dict(loaded.state_dict())
        del loaded
