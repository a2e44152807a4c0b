"""Real-size training steps and generation: SD 2.1, SDXL, SD3.5-medium and Flux.1-dev with random weights.

Each family is built at its published size (the checkpoints' ``config.json`` values, written out in
``REAL`` below) with random weights, directly on the device in the asked dtype, and trained with
each method it supports through the training loop's objective (``method_loss``, ``LatentCache``).
Printed per family and method: median step time, peak memory (CUDA max allocated; CPU: peak RSS),
the FLOPs of one step (``torch.utils.flop_counter``) and the model FLOPs utilisation against the
device's peak dense bf16/fp16 rate; then generation images/s of dreamdist's path against the plain
diffusers pipeline call with the same prompt embeddings, steps and size, measured in the same run.

    python bench/bench_gpu.py [--families sd,sdxl,sd3,flux] [--methods dreamdistribution,...]
                              [--dtype bf16] [--gradient-checkpointing] [--steps 5] [--batch 1]
    python bench/bench_gpu.py --quick    # every family shrunk to a few layers, 32 px, CPU (seconds)

``--offload-encoders`` and ``--cache-text`` are accepted and reported as "not supported": the
training loop keeps every text encoder on the device and encodes the prompts every step.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import tempfile
import time
from pathlib import Path

import torch

from _common import time_steps

# Peak dense bf16/fp16 tensor-core rates (TFLOP/s, no sparsity), by a substring of get_device_name()
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
NOT_IN_LOOP = ("offload_encoders", "cache_text")  # flags the training loop has no option for yet
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PROMPT = "a photo of a dog"
DEFAULT_METHODS = ("dreamdistribution", "textual-inversion", "dreambooth")  # where the family supports them

# Sources: the config.json files of stabilityai/stable-diffusion-2-1-base (SD 2.1, 512 px),
# stabilityai/stable-diffusion-xl-base-1.0 (SDXL, 1024 px), stabilityai/stable-diffusion-3.5-medium
# (SD3.5-medium, 1024 px) and black-forest-labs/FLUX.1-dev (1024 px): UNet / transformer, text
# encoders (CLIP-L, OpenCLIP-H, CLIP-G, T5-XXL) and VAE. Vocabulary sizes are the real ones.
CLIP_L = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    hidden_act="quick_gelu", projection_dim=768,
)  # fmt: skip
CLIP_H = dict(  # SD 2.x's OpenCLIP ViT-H text tower (23 of its 24 layers are shipped)
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
    hidden_act="gelu", projection_dim=512,
)  # fmt: skip
CLIP_G = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    hidden_act="gelu", projection_dim=1280,
)  # fmt: skip
T5_XXL = dict(
    vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
)  # fmt: skip
VAE_4 = dict(  # SD 2.1 / SDXL: 4 latent channels, 8x downsampling
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)  # fmt: skip
VAE_16 = dict(VAE_4, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)  # SD3 / Flux.1
REAL = {
    "sd": dict(
        size=512,
        text=[CLIP_H],
        vae=dict(VAE_4, scaling_factor=0.18215),
        unet=dict(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            attention_head_dim=(5, 10, 20, 20),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=1024,
            use_linear_projection=True,
        ),
    ),  # fmt: skip
    "sdxl": dict(  # UNet 2.6 B
        size=1024,
        text=[CLIP_L, CLIP_G],
        vae=dict(VAE_4, scaling_factor=0.13025, force_upcast=True),
        unet=dict(
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            attention_head_dim=(5, 10, 20),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
    ),  # fmt: skip
    "sd3": dict(  # MMDiT-X 2.5 B
        size=1024,
        text=[CLIP_L, CLIP_G, T5_XXL],
        t5_length=256,
        vae=dict(VAE_16, scaling_factor=1.5305, shift_factor=0.0609),
        transformer=dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            pos_embed_max_size=384,
            dual_attention_layers=tuple(range(13)),
            qk_norm="rms_norm",
        ),
        scheduler=dict(shift=3.0),
    ),  # fmt: skip
    "flux": dict(  # 12 B
        size=1024,
        text=[CLIP_L, T5_XXL],
        t5_length=512,
        vae=dict(VAE_16, scaling_factor=0.3611, shift_factor=0.1159),
        transformer=dict(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        ),
        scheduler=dict(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
    ),  # fmt: skip
}

INFERENCE_SCHEDULER = {
    "sd": {"_class_name": "PNDMScheduler", "skip_prk_steps": True},
    "sdxl": {"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading"},
}

# --quick: the same builders over shrunk configs (a few layers, narrow widths, a 2x VAE, 32 px)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=32)
TINY_T5 = dict(d_model=80, d_kv=20, d_ff=96, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
TINY_VAE = dict(
    block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
    down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
)  # fmt: skip
TINY_UNET = dict(
    block_out_channels=(8, 16), layers_per_block=1, attention_head_dim=4, norm_num_groups=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
)  # fmt: skip
TINY = {
    "sd": dict(unet=dict(TINY_UNET, cross_attention_dim=32)),
    "sdxl": dict(
        unet=dict(
            TINY_UNET,
            transformer_layers_per_block=(1, 1),
            cross_attention_dim=64,
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
        ),
    ),  # fmt: skip
    "sd3": dict(
        transformer=dict(
            sample_size=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=2,
            joint_attention_dim=80,
            caption_projection_dim=16,
            pooled_projection_dim=64,
            pos_embed_max_size=16,
            dual_attention_layers=(0,),
        ),
    ),  # fmt: skip
    "flux": dict(
        transformer=dict(
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=80,
            pooled_projection_dim=32,
            axes_dims_rope=(4, 4, 8),
        ),
    ),  # fmt: skip
}


def family_config(family: str, quick: bool) -> dict:
    """The component configs of ``family``: ``REAL``'s, or (``quick``) shrunk by ``TINY``'s overrides."""
    real = REAL[family]
    if not quick:
        return real
    config = {**real, "size": 32, "t5_length": 16, "vae": {**real["vae"], **TINY_VAE}}
    config["text"] = [{**t, **(TINY_T5 if "d_model" in t else TINY_TEXT)} for t in real["text"]]
    for part, overrides in TINY[family].items():
        config[part] = {**real[part], **overrides}
    return config


@contextlib.contextmanager
def building(device: torch.device, dtype: torch.dtype):
    """New modules are created on ``device`` in ``dtype`` (a 12 B model never exists twice, nor in fp32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(old)


def text_encoder(spec: dict, tokenizer, with_projection: bool):
    """A random CLIP (with or without projection) or T5 encoder of ``spec``'s size; the ids come from ``tokenizer``."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    if "d_model" in spec:
        ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        config = T5Config(**spec, dropout_rate=0.0, decoder_start_token_id=tokenizer.pad_token_id, **ids)
        return T5EncoderModel(config)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = CLIPTextConfig(**spec, max_position_embeddings=77, pad_token_id=tokenizer.pad_token_id, **ids)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def build_backbone(family: str, quick: bool, device: torch.device, dtype: torch.dtype, folder: Path):
    """A ``Backbone`` of ``family`` from in-memory random components (no pipeline folder is written)."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        UNet2DConditionModel,
    )
    from transformers import CLIPTokenizer

    from dreamdist.backbones import FluxBackbone, SD3Backbone, SDBackbone, SDXLBackbone
    from dreamdist.testing import WORDS
    from dreamdist.tokenizers import build_clip_tokenizer, build_t5_tokenizer

    cfg = family_config(family, quick)
    size, specs = cfg["size"], cfg["text"]
    clip = build_clip_tokenizer(list(WORDS), folder / "clip")  # few words: the ids used stay small
    clip_2 = CLIPTokenizer.from_pretrained(folder / "clip", pad_token="!")  # SDXL's and SD3's second tokenizer
    t5 = build_t5_tokenizer(list(WORDS), folder / "t5", max_length=cfg["t5_length"]) if "t5_length" in cfg else None
    defaults = {"height": size, "width": size}
    ddpm = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False
    )  # schedulers outside ``building``: their tables stay fp32 on the CPU
    flow = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **cfg.get("scheduler", {}))
    torch.manual_seed(0)
    with building(device, dtype):
        vae = AutoencoderKL(**cfg["vae"], sample_size=size)
        latent_side = size // 2 ** (len(cfg["vae"]["block_out_channels"]) - 1)
        if family in ("sd", "sdxl"):
            unet = UNet2DConditionModel(**cfg["unet"], sample_size=latent_side, in_channels=4, out_channels=4)
            encoder = text_encoder(specs[0], clip, with_projection=False)
            shipped = INFERENCE_SCHEDULER[family]  # the checkpoint's own inference scheduler, over the same betas
            common = dict(
                model_id=f"random-{family}", scheduler_config={**ddpm.config, **shipped}, generation_defaults=defaults
            )
            if family == "sd":
                backbone = SDBackbone(clip, encoder, vae, unet, ddpm, **common)
            else:
                encoder_2 = text_encoder(specs[1], clip_2, with_projection=True)
                backbone = SDXLBackbone(
                    clip, encoder, vae, unet, ddpm, **common, tokenizer_2=clip_2, text_encoder_2=encoder_2
                )
            return backbone.to(device, dtype)
        flow_config = {**flow.config, "_class_name": "FlowMatchEulerDiscreteScheduler"}
        common = dict(model_id=f"random-{family}", scheduler_config=flow_config, generation_defaults=defaults)
        if family == "sd3":
            encoders = [text_encoder(s, t, True) for s, t in zip(specs, (clip, clip_2, t5))]
            transformer = SD3Transformer2DModel(**cfg["transformer"])
            backbone = SD3Backbone(
                clip, encoders[0], clip_2, encoders[1], t5, encoders[2], vae, transformer, flow, **common,
                max_sequence_length=cfg["t5_length"],
            )  # fmt: skip
        else:
            encoders = [text_encoder(s, t, False) for s, t in zip(specs, (clip, t5))]
            transformer = FluxTransformer2DModel(**cfg["transformer"])
            backbone = FluxBackbone(
                clip, encoders[0], t5, encoders[1], vae, transformer, flow, **common,
                max_sequence_length=cfg["t5_length"],
            )  # fmt: skip
    return backbone.to(device, dtype)


def release() -> None:
    """Free what the previous variant held (its peak is its own)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def method_config(name: str):
    """The method's defaults; DreamBooth as LoRA without prior preservation (no class images to generate)."""
    from dreamdist.testing import example_config

    return example_config(name, lora=True, prior_preservation=False) if name == "dreambooth" else example_config(name)


def train_variant(family: str, name: str, args, device: torch.device, folder: Path) -> dict:
    """Time ``args.steps`` optimizer steps of method ``name`` on ``family`` (the loop's objective and latents)."""
    from dreamdist.data import ReferenceSet
    from dreamdist.methods import get_method
    from dreamdist.testing import write_images
    from dreamdist.training.loop import LatentCache, _default_groups, method_loss

    dtype = DTYPES[args.dtype]
    backbone = build_backbone(family, args.quick, device, dtype, folder / f"{family}-{name}")
    size = backbone.sample_size
    side = max(size, 64)  # references are read at ``size``; files under 64 px are refused
    data = ReferenceSet.from_folder(write_images(folder / f"refs-{side}", max(args.batch, 2), size=(side, side)), size)
    method = get_method(name).implementation(method_config(name))
    generator = torch.Generator().manual_seed(0)
    method.setup(backbone, data, generator, run_dir=folder / f"run-{family}-{name}")
    if args.gradient_checkpointing:  # as the training loop does (transformers checkpoints in train mode only)
        backbone.denoiser.enable_gradient_checkpointing()
        for encoder in backbone.text_encoders:
            encoder.gradient_checkpointing_enable()
            encoder.train()
    groups = method.param_groups(method.default_learning_rate) or _default_groups(method)
    optimizer = torch.optim.AdamW(groups, lr=method.default_learning_rate, weight_decay=0.0)
    cache = LatentCache(backbone, data, flip=False)
    timesteps = method.default_timesteps
    autocast = torch.autocast(device.type, dtype) if dtype != torch.float32 else contextlib.nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        latents, labels, indices = cache.sample(args.batch, generator)
        latents = (latents.to(device) - backbone.latent_shift) * backbone.latent_scale
        with autocast:
            total, _, _ = method_loss(backbone, method, latents, labels, generator, indices, timesteps)
        total.backward()
        optimizer.step()
        method.after_step()

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:  # the first step, counted (also a warm-up)
        step()
    step_s, peak = time_steps(step, args.steps, warmup=0 if args.quick else 1)
    return {"family": family, "method": name, "step_s": step_s, "peak_mib": peak, "flops": counter.get_total_flops()}


def generation_variant(family: str, args, device: torch.device, folder: Path) -> dict:
    """Images/s of dreamdist's generation path and of the plain pipeline call, same embeddings, steps, size."""
    from dreamdist.config import GenerateConfig
    from dreamdist.generation import generate_images
    from dreamdist.pipeline import make_pipeline

    backbone = build_backbone(family, args.quick, device, DTYPES[args.dtype], folder / f"{family}-gen")
    size, n = backbone.sample_size, args.images
    config = GenerateConfig(
        out=str(folder / f"gen-{family}"),
        prompt=PROMPT,
        num_images=n,
        num_inference_steps=args.gen_steps,
        batch_size=n,
        height=size,
        width=size,
        progress=False,
    )
    pipe = make_pipeline(backbone)
    guidance = backbone.default_guidance
    with torch.no_grad():
        features = backbone.encode_text([PROMPT])  # (1, L', D)
        call = backbone.pipeline_call_kwargs(features.expand(n, *features.shape[1:]), "", guidance)

    def plain():
        gens = [torch.Generator().manual_seed(i) for i in range(n)]
        with torch.no_grad():
            pipe(**call, num_inference_steps=args.gen_steps, height=size, width=size, generator=gens)

    def ours():
        generate_images(backbone, [], config)

    timings = {}
    for label, fn in (("plain", plain), ("dreamdist", ours)) * 2:  # the second round is timed
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timings[label] = time.perf_counter() - start
    return {"family": family, "plain_img_s": n / timings["plain"], "ours_img_s": n / timings["dreamdist"]}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The device's peak dense bf16 TFLOP/s: ``--peak-tflops``, else ``PEAK_TFLOPS`` by device name; None: unknown."""
    if given is not None:
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((rate for key, rate in PEAK_TFLOPS.items() if key in name), None)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default="sd,sdxl,sd3,flux", help="comma-separated: sd, sdxl, sd3, flux")
    parser.add_argument(
        "--methods",
        help="comma-separated registry names (default: DreamDistribution, TI, DreamBooth-LoRA where supported)",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per method (median reported)")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--images", type=int, default=4, help="images per generation variant (one pipeline call)")
    parser.add_argument("--gen-steps", type=int, default=20, help="denoising steps of the generation variants")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="weights and autocast dtype")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="as train --gradient-checkpointing")
    parser.add_argument("--offload-encoders", action="store_true", help="text encoders on CPU (not in the loop yet)")
    parser.add_argument("--cache-text", action="store_true", help="cache text features (not in the loop yet)")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s (default: by device name)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--quick", action="store_true", help="shrunk families, 1 step, 32 px, fp32 on CPU")
    parser.add_argument("--json", help="also write the tables into this docs/results file (scripts/bench_docs.py)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.batch, args.images, args.gen_steps, args.dtype = 1, 1, 1, 2, "fp32"
        args.device = args.device or "cpu"
        torch.set_num_threads(1)
    return args


def main() -> None:
    from dreamdist.backbones import FAMILIES

    args = parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    peak = peak_tflops(device, args.peak_tflops)
    families = {f.name: f for f in FAMILIES}
    asked = [m.strip() for m in args.methods.split(",")] if args.methods else None
    print(
        "training loop: --gradient-checkpointing and --dtype supported; --offload-encoders, --cache-text not supported"
    )
    for flag in NOT_IN_LOOP:
        if getattr(args, flag):
            print(f"--{flag.replace('_', '-')}: not supported (the training loop has no such option yet); ignored")
    rows, gen_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for family in [f.strip() for f in args.families.split(",")]:
            methods = [m for m in (asked or DEFAULT_METHODS) if m in families[family].methods]
            for name in methods:
                rows.append(train_variant(family, name, args, device, Path(tmp)))
                release()  # the variant's backbone went with its frame
            gen_rows.append(generation_variant(family, args, device, Path(tmp)))
            release()
    scale = "quick (shrunk)" if args.quick else "real size, random weights"
    print(f"{scale}, {device} {args.dtype}, batch {args.batch}, gradient checkpointing {args.gradient_checkpointing}")
    print(f"{'family':8s}{'method':20s}{'step (s)':>10s}{'peak (MiB)':>12s}{'TFLOP/step':>12s}{'MFU':>8s}")
    for r in rows:
        r["mfu"] = r["flops"] / r["step_s"] / (peak * 1e12) if peak else None
        mfu = f"{r['mfu']:8.1%}" if r["mfu"] is not None else f"{'n/a':>8s}"
        print(
            f"{r['family']:8s}{r['method']:20s}{r['step_s']:10.3f}{r['peak_mib']:12.0f}{r['flops'] / 1e12:12.4g}{mfu}"
        )
    print(f"generation, {args.images} images, {args.gen_steps} steps: images/s")
    print(f"{'family':8s}{'plain':>10s}{'dreamdist':>11s}{'ratio (dreamdist/plain)':>25s}")
    for g in gen_rows:
        g["ratio"] = g["ours_img_s"] / g["plain_img_s"]
        print(f"{g['family']:8s}{g['plain_img_s']:10.3f}{g['ours_img_s']:11.3f}{g['ratio']:25.2f}")
    if args.json:
        write_json(args, device, peak, rows, gen_rows)


def write_json(args, device: torch.device, peak: float | None, rows: list[dict], gen_rows: list[dict]) -> None:
    """One table of training rows and generation rows (docs/results schema, ``bench/_results.py``)."""
    from _results import command_line, machine, write_table

    keys = ("family", "method", "step_s", "peak_mib", "tflop_step", "mfu", "plain_img_s", "ours_img_s", "ratio")
    formats = {"step_s": "{:.3f}", "peak_mib": "{:.0f}", "tflop_step": "{:.2f}", "mfu": "{:.1%}"}
    columns = [{"key": k, "label": k, **({"format": formats[k]} if k in formats else {})} for k in keys]
    train = [
        {"cells": {**{k: r[k] for k in ("family", "method", "step_s", "peak_mib")}, "tflop_step": r["flops"] / 1e12}}
        for r in rows
    ]
    for row, r in zip(train, rows):
        if r["mfu"] is not None:
            row["cells"]["mfu"] = r["mfu"]
    gen = [{"cells": {"method": "generation", **g}} for g in gen_rows]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    settings = {
        **{k: getattr(args, k) for k in ("steps", "batch", "images", "gen_steps", "dtype", "quick")},
        **{k: getattr(args, k) for k in ("gradient_checkpointing", *NOT_IN_LOOP)},
        "not_supported": [f for f in NOT_IN_LOOP if getattr(args, f)],
        "device": device_name,
        "peak_tflops": peak,
        **machine(),
    }
    caption = "Real-size families with random weights: training steps per method and generation vs plain diffusers"
    write_table(
        args.json,
        columns=columns,
        rows=train + gen,
        caption=caption,
        command=command_line("bench/bench_gpu.py", None),
        settings=settings,
    )


if __name__ == "__main__":
    main()
