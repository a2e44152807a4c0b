"""Train the toy text-to-image model from scratch and save it as a diffusers pipeline folder.

    python scripts/train_toy_model.py --threads 1 --vae-minutes 7 --unet-minutes 58

Stage 1 trains the tiny VAE (``train_vae``). Stage 2 trains the UNet and the CLIP text encoder
jointly on captioned renders of the *seen* combos, in the VAE's latent space: v-prediction,
min-SNR-5 loss weighting, AdamW with warmup, EMA weights, 10 % empty captions (for classifier-
free guidance) and 15 % attribute dropout in captions. Every ``--eval-every`` minutes the EMA
model is saved to ``--out`` and scored by the oracle; the loss and accuracy curves are written
next to it (``training_loss.csv``, ``training_eval.csv``, ``training_curve.png``).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from dreamdist.generation import assemble_pipeline
from dreamdist.toyworld.components import build_scheduler, build_text_encoder, build_tokenizer, build_unet
from dreamdist.toyworld.curves import plot_curves, write_csv
from dreamdist.toyworld.oracle import ORACLE_FILE, load_oracle
from dreamdist.toyworld.quality import oracle_accuracy
from dreamdist.toyworld.render import render
from dreamdist.toyworld.sampling import GENERATION_DEFAULTS, sampling_scheduler
from dreamdist.toyworld.train_vae import train_vae

DEFAULT_OUT = Path(__file__).parent / "assets" / "toy-sd"


@dataclass
class BaseTrainConfig:
    """Settings of the base-model training run (every field is a command-line flag)."""

    out: Path = field(
        default=DEFAULT_OUT, metadata={"help": "pipeline folder written (and overwritten at every evaluation)"}
    )
    seed: int = field(default=0, metadata={"help": "seeds init, data, noise and timesteps"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    device: str = field(default="auto", metadata={"help": '"auto" = cuda when present, else cpu'})
    vae_minutes: float = field(default=7.0, metadata={"help": "stage-1 budget"})
    vae_max_steps: int | None = field(default=None, metadata={"help": "stage-1 step cap (reproducible stopping point)"})
    vae_path: Path | None = field(default=None, metadata={"help": "reuse a trained VAE folder (skips stage 1)"})
    unet_minutes: float = field(default=58.0, metadata={"help": "stage-2 budget"})
    max_steps: int | None = field(default=None, metadata={"help": "stage-2 step cap (reproducible stopping point)"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (after warmup, constant)"})
    warmup_steps: int = field(default=200, metadata={"help": "linear learning-rate warmup steps"})
    ema_decay: float = field(
        default=0.999, metadata={"help": "EMA decay of the saved weights (ramped up as (1 + step) / (10 + step))"}
    )
    min_snr_gamma: float = field(default=5.0, metadata={"help": "gamma of the min-SNR loss weighting"})
    attribute_dropout: float = field(
        default=0.15, metadata={"help": "chance of leaving each attribute out of a caption"}
    )
    empty_caption: float = field(
        default=0.10, metadata={"help": "chance of an empty caption (classifier-free guidance)"}
    )
    eval_every: float = field(default=10.0, metadata={"help": "minutes between evaluations + saves"})
    eval_images: int = field(default=48, metadata={"help": "images per split per evaluation (0: save without scoring)"})


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights for v-prediction: min(SNR, gamma) / (SNR + 1), shape (B,)."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]  # (B,)
    snr = alphas / (1 - alphas)
    return torch.clamp(snr, max=gamma) / (snr + 1)


def training_batch(cfg: BaseTrainConfig, step: int) -> tuple[torch.Tensor, list[str]]:
    """Pixels (B, 3, 32, 32) in [-1, 1] of seen combos and their (sometimes empty) captions."""
    batch = render(
        cfg.batch_size, seed=cfg.seed * 1_000_003 + step, split="seen", caption_dropout=cfg.attribute_dropout
    )
    keep = torch.rand(cfg.batch_size, generator=torch.Generator().manual_seed(cfg.seed + 7 * step))
    captions = [c if k >= cfg.empty_caption else "" for c, k in zip(batch.captions, keep.tolist())]
    return batch.images * 2 - 1, captions


def denoising_loss(
    vae,
    tokenizer,
    text_encoder,
    unet,
    scheduler,
    pixels: torch.Tensor,
    captions: list[str],
    generator: torch.Generator,
    min_snr_gamma: float,
) -> torch.Tensor:
    """Min-SNR-weighted v-prediction loss of one captioned batch (gradients reach UNet and text encoder).

    Args:
        vae, tokenizer, text_encoder, unet, scheduler: the model's parts (the VAE stays frozen).
        pixels: (B, 3, 32, 32) in [-1, 1].
        captions: B strings ("" for the unconditional ones).
        generator: draws the latent sample, the noise and the timesteps, in that order.
        min_snr_gamma: gamma of the min-SNR weighting.
    """
    device = unet.device
    ids = tokenizer(captions, padding="max_length", truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        latents = vae.encode(pixels.to(device)).latent_dist.sample(generator)  # (B, 4, 16, 16)
        latents = latents * vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator, device=device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(captions),), generator=generator, device=device)
    noisy = scheduler.add_noise(latents, noise, t)
    target = scheduler.get_velocity(latents, noise, t)
    states = text_encoder(ids.to(device)).last_hidden_state  # (B, 77, 128)
    pred = unet(noisy, t, states).sample  # (B, 4, 16, 16)
    per_sample = (pred - target).pow(2).mean(dim=(1, 2, 3))  # (B,)
    return (snr_weights(scheduler, t, min_snr_gamma) * per_sample).mean()


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def save_pipeline(components: dict, out: Path, tokenizer_files: Path | None = None) -> None:
    """Write a diffusers pipeline folder (safetensors), replacing ``out`` only once complete.

    ``tokenizer_files``: folder with the tokenizer's vocab.json and merges.txt, copied next to
    tokenizer.json so that slow-tokenizer loaders (older transformers) read the folder too.
    """
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe = assemble_pipeline(**components)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):
        if tokenizer_files is not None and (tokenizer_files / name).is_file():
            shutil.copy(tokenizer_files / name, tmp / "tokenizer" / name)
    (tmp / "dreamdist.json").write_text(json.dumps(GENERATION_DEFAULTS, indent=1))  # read by dreamdist
    extras = (
        "training_loss.csv",
        "training_eval.csv",
        "training_vae.csv",
        "training_curve.png",
        "training_config.json",
    )
    for extra in extras:
        if (out / extra).exists():
            shutil.copy(out / extra, tmp / extra)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def train_base(cfg: BaseTrainConfig) -> Path:
    """Run both stages; returns the pipeline folder."""
    torch.set_num_threads(cfg.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    vae_rows: list[dict] = []
    if cfg.vae_path is not None:
        vae = AutoencoderKL.from_pretrained(cfg.vae_path).to(device)
    else:
        vae = train_vae(cfg.vae_minutes, seed=cfg.seed, device=device, max_steps=cfg.vae_max_steps, log=vae_rows)
        vae.save_pretrained(out.parent / f"{out.name}_vae")  # reusable with --vae-path
    vae.requires_grad_(False).eval()

    torch.manual_seed(cfg.seed)
    tokenizer_files = out.parent / "_tokenizer_build"
    tokenizer = build_tokenizer(tokenizer_files)
    text_encoder, unet = build_text_encoder(tokenizer).to(device), build_unet().to(device)
    scheduler = build_scheduler()
    ema_text, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    loss_rows, eval_rows, smooth = [], [], None
    start, last_eval, step = time.time(), time.time(), 0

    def evaluate_and_save(final: bool = False) -> None:
        minutes = (time.time() - start) / 60
        components = dict(
            vae=vae, text_encoder=ema_text, tokenizer=tokenizer, unet=ema_unet,
            scheduler=sampling_scheduler(scheduler),
        )  # fmt: skip
        row = {"step": step, "minutes": round(minutes, 2), "images": step * cfg.batch_size}
        if cfg.eval_images > 0 and ORACLE_FILE.is_file():  # looked up each time: may be trained alongside
            oracle = load_oracle()
            pipe = assemble_pipeline(**components)
            for split in ("seen", "held_out"):
                scores = oracle_accuracy(pipe, oracle, split=split, n=cfg.eval_images, seed=1000 + step)
                row.update({f"{split}_{k}": round(v, 4) for k, v in scores.items()})
            print("eval", json.dumps(row), flush=True)
            eval_rows.append(row)
        save_pipeline(components, out, tokenizer_files)
        write_csv(loss_rows, out / "training_loss.csv")
        write_csv(vae_rows, out / "training_vae.csv")
        write_csv(eval_rows, out / "training_eval.csv")
        plot_curves(loss_rows, eval_rows, out / "training_curve.png")
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
        (out / "training_config.json").write_text(json.dumps({**config, "final": final, **row}, indent=1))

    while time.time() - start < cfg.unet_minutes * 60 and (cfg.max_steps is None or step < cfg.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
        pixels, captions = training_batch(cfg, step)
        models = (vae, tokenizer, text_encoder, unet, scheduler)
        loss = denoising_loss(*models, pixels, captions, generator, cfg.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        ema_update(ema_unet, unet, decay)
        ema_update(ema_text, text_encoder, decay)
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        if step % 50 == 0:
            minutes = (time.time() - start) / 60
            loss_rows.append({"step": step, "minutes": round(minutes, 3), "loss": round(smooth, 5)})
            print(f"step {step:6d}  loss {smooth:.4f}  {minutes:6.1f} min", flush=True)
        step += 1
        if time.time() - last_eval > cfg.eval_every * 60:
            evaluate_and_save()
            last_eval = time.time()
    evaluate_and_save(final=True)
    shutil.rmtree(tokenizer_files, ignore_errors=True)
    return out


def parse_args(argv: list[str] | None = None) -> BaseTrainConfig:
    """Command-line flags -> ``BaseTrainConfig`` (one flag per field, same defaults)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for spec in fields(BaseTrainConfig):
        value = spec.default
        kind = type(value) if value is not None else (Path if spec.name.endswith("path") else int)
        kind = Path if isinstance(value, Path) else kind
        text = f"{spec.metadata['help']} (default: {value})"
        parser.add_argument("--" + spec.name.replace("_", "-"), type=kind, default=value, help=text)
    return BaseTrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``scripts/train_toy_model.py``."""
    print(f"wrote {train_base(parse_args(argv))}")


if __name__ == "__main__":
    main()
