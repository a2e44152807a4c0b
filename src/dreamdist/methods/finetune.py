"""Shared pieces of the weight-tuning methods (DreamBooth, Custom Diffusion, two-stage): trainable
state by name, LoRA adapters (peft, the diffusers way), and diffusers pipeline folders."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dreamdist.backbone import Backbone

PIPELINE_DIR = "pipeline"
UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # diffusers' DreamBooth-LoRA script
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
KOHYA_FILE = "lora_kohya.safetensors"
# pipeline module name -> kohya key prefix, per family (SDXL numbers its two text encoders)
KOHYA_PREFIXES = {
    "sd": {"unet": "lora_unet", "text_encoder": "lora_te"},
    "sdxl": {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"},
}


def text_encoders(backbone: Backbone) -> dict[str, nn.Module]:
    """The backbone's text encoders by pipeline name (``text_encoder``, SDXL also ``text_encoder_2``)."""
    names = ["text_encoder", "text_encoder_2"]
    return dict(zip(names, backbone.text_encoders))


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


def sgm_unet_path(path: str, layers_per_block: int) -> str:
    """A diffusers UNet attention module path -> the original (SGM/LDM) one kohya uses for SDXL.

    ``down_blocks.i.attentions.j.X`` -> ``input_blocks.{1 + i (n + 1) + j}.1.X``, ``mid_block.attentions.0.X``
    -> ``middle_block.1.X``, ``up_blocks.i.attentions.j.X`` -> ``output_blocks.{i (n + 1) + j}.1.X``
    (n = layers per block; the names inside a transformer block are the same in both layouts).
    """
    parts = path.split(".")
    step = layers_per_block + 1  # each level: n resnets (+1 in the up path) and a down/upsampler
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        return ".".join(["input_blocks", str(1 + int(parts[1]) * step + int(parts[3])), "1", *parts[4:]])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1", *parts[3:]])
    if parts[0] == "up_blocks" and parts[2] == "attentions":
        return ".".join(["output_blocks", str(int(parts[1]) * step + int(parts[3])), "1", *parts[4:]])
    raise ValueError(f"no kohya name for UNet module {path!r} (LoRA on attention layers only)")


def kohya_state(modules: dict[str, nn.Module], family: str, alpha: float) -> dict[str, torch.Tensor]:
    """LoRA adapters in the kohya / A1111 / ComfyUI layout.

    Per adapted layer ``<prefix>_<module path with '_'>``: ``.lora_down.weight`` (peft's A, (r, in)),
    ``.lora_up.weight`` (B, (out, r)) and ``.alpha`` (a scalar; the scale is alpha / r). UNet paths are
    diffusers' on SD 1.x/2.x (as kohya's SD scripts write them) and the original SGM ones on SDXL.
    """
    prefixes = KOHYA_PREFIXES[family]
    out: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        blocks = getattr(module.config, "layers_per_block", None) if name == "unet" else None
        sgm = family == "sdxl" and isinstance(blocks, int)
        for path, layer in module.named_modules():  # full module paths (text_model.encoder..., down_blocks...)
            if not hasattr(layer, "lora_A") or "default" not in layer.lora_A:
                continue
            if name != "unet" and not path.startswith("text_model."):
                path = f"text_model.{path}"  # transformers 5 CLIP models have no text_model wrapper; kohya's keys do
            elif sgm:
                path = sgm_unet_path(path, blocks)
            stem = f"{prefixes[name]}_{path.replace('.', '_')}"
            out[f"{stem}.lora_down.weight"] = layer.lora_A["default"].weight.detach().float().cpu().contiguous()
            out[f"{stem}.lora_up.weight"] = layer.lora_B["default"].weight.detach().float().cpu().contiguous()
            out[f"{stem}.alpha"] = torch.tensor(float(alpha))
    return out


def save_pipeline(backbone: Backbone, folder: Path) -> Path:
    """The backbone as a diffusers pipeline folder (``StableDiffusionPipeline`` or, on SDXL, ``...XLPipeline``)."""
    from dreamdist.pipeline import make_pipeline

    path = folder / PIPELINE_DIR
    make_pipeline(backbone).save_pretrained(str(path), safe_serialization=True)
    return path


def load_pipeline_weights(backbone: Backbone, folder: Path, modules: list[str]) -> None:
    """Copy the weights of ``modules`` (``unet``, ``text_encoder``) from a saved pipeline folder into
    the backbone, keeping its device and dtype. Tokens added to the saved tokenizer must already be
    in the backbone's (the caller installs them first)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    path = folder / PIPELINE_DIR
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{path} is missing: the artifact's fine-tuned weights live there; copy the whole run folder"
        )
    classes = {
        "unet": UNet2DConditionModel,
        "text_encoder": CLIPTextModel,
        "text_encoder_2": CLIPTextModelWithProjection,
    }
    for name in modules:
        target = getattr(backbone, name)
        loaded = classes[name].from_pretrained(str(path), subfolder=name, use_safetensors=True)
        target.load_state_dict(loaded.state_dict())
        del loaded
