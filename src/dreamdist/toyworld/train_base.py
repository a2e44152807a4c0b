"""Train the toy text-to-image model from scratch and save it as a diffusers pipeline folder.

    python scripts/train_toy_model.py --threads 2 --vae-minutes 7 --unet-minutes 58
    # continue the shipped model for hours, in the background, across restarts:
    python scripts/train_toy_model.py --init-from toy --out /tmp/toy-v2 --unet-minutes 600 --resume

Stage 1 trains the tiny VAE (``train_vae``). Stage 2 trains the UNet and the CLIP text encoder
jointly on captioned renders of the *seen* combos, in the VAE's latent space: v-prediction,
min-SNR-5 loss weighting, AdamW with warmup, EMA weights, 10 % empty captions (for classifier-
free guidance) and 15 % attribute dropout in captions. Every ``--eval-every`` minutes the EMA
model is saved to ``--out`` and scored by the oracle; the loss and accuracy curves are written
next to it (``training_loss.csv``, ``training_eval.csv``, ``training_curve.png``).

Every ``--checkpoint-every`` minutes the full training state (weights, EMA weights, optimizer,
step, noise generator, curves) is written atomically to ``<out>_state/``; ``--resume`` continues
from it exactly (the data stream is a function of the step). ``--init-from`` warm-starts from a
trained pipeline folder (``toy`` = the shipped model): its VAE is reused and its UNet and text
encoder are the starting (and EMA) weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_model, save_model
from transformers import CLIPTextModel

from dreamdist.backbones.sd import assemble_sd_pipeline
from dreamdist.toyworld import model_dir
from dreamdist.toyworld.components import build_scheduler, build_text_encoder, build_tokenizer, build_unet
from dreamdist.toyworld.curves import plot_curves, write_csv
from dreamdist.toyworld.oracle import ORACLE_FILE, load_oracle
from dreamdist.toyworld.quality import oracle_accuracy
from dreamdist.toyworld.render import render
from dreamdist.toyworld.sampling import GENERATION_DEFAULTS, sampling_scheduler
from dreamdist.toyworld.train_vae import train_vae
from dreamdist.training.loop import stop_on_signals

DEFAULT_OUT = Path(__file__).parent / "assets" / "toy-sd"


@dataclass
class BaseTrainConfig:
    """Settings of the base-model training run (every field is a command-line flag)."""

    out: Path = field(
        default=DEFAULT_OUT, metadata={"help": "pipeline folder written (and overwritten at every evaluation)"}
    )
    seed: int = field(default=0, metadata={"help": "seeds init, data, noise and timesteps"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    device: str = field(default="auto", metadata={"help": '"auto" = cuda when present, else cpu'})
    vae_minutes: float = field(default=7.0, metadata={"help": "stage-1 budget"})
    vae_max_steps: int | None = field(default=None, metadata={"help": "stage-1 step cap (reproducible stopping point)"})
    vae_path: Path | None = field(default=None, metadata={"help": "reuse a trained VAE folder (skips stage 1)"})
    unet_minutes: float = field(default=58.0, metadata={"help": "stage-2 budget"})
    max_steps: int | None = field(default=None, metadata={"help": "stage-2 step cap (reproducible stopping point)"})
    init_from: str | None = field(
        default=None, metadata={"help": 'warm start from a pipeline folder ("toy" = the shipped model; skips stage 1)'}
    )
    resume: bool = field(default=False, metadata={"help": "continue from <out>_state/ when it exists"})
    checkpoint_every: float = field(default=5.0, metadata={"help": "minutes between training-state checkpoints"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW peak learning rate (after warmup)"})
    lr_schedule: str = field(
        default="constant", metadata={"help": 'constant, or "cosine" (decays to 10 %% at --max-steps; needs it)'}
    )
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

    def __post_init__(self) -> None:
        """Reject contradictory flags by name."""
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"--lr-schedule must be constant or cosine, not {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and not self.max_steps:
            raise ValueError("--lr-schedule cosine decays over --max-steps; give --max-steps")


def learning_rate(cfg: BaseTrainConfig, step: int) -> float:
    """Linear warmup, then constant or cosine down to 10 % of the peak at ``max_steps``."""
    scale = min(1.0, (step + 1) / cfg.warmup_steps)
    if cfg.lr_schedule == "cosine":
        progress = min(1.0, step / max(1, cfg.max_steps))
        scale *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * scale


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
    pipe = assemble_sd_pipeline(**components)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for config in tmp.glob("*/config.json"):  # a warm start's source path is not part of the model
        values = json.loads(config.read_text())
        if values.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
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


def state_dir(cfg: BaseTrainConfig) -> Path:
    """Folder of the resumable training state: ``<out>_state`` next to the pipeline folder."""
    out = Path(cfg.out)
    return out.parent / f"{out.name}_state"


def save_state(folder: Path, modules: dict[str, torch.nn.Module], optimizer, meta: dict) -> None:
    """Write weights, EMA weights, optimizer and progress to ``folder`` atomically (tmp folder + rename)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in modules.items():
        save_model(module, str(tmp / f"{name}.safetensors"))  # tied weights (T5's embeddings) stored once
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")  # our own file, read back with weights_only=True
    (tmp / "meta.json").write_text(json.dumps(meta))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)  # a complete state exists at every moment: old, then new
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_state(folder: Path, modules: dict[str, torch.nn.Module], optimizer) -> dict:
    """Restore what ``save_state`` wrote; returns its meta (step, generator state, curves)."""
    if not (folder / "meta.json").is_file() and folder.with_name(folder.name + ".old").is_dir():
        folder = folder.with_name(folder.name + ".old")  # killed between the two renames
    for name, module in modules.items():
        load_model(module, str(folder / f"{name}.safetensors"))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return json.loads((folder / "meta.json").read_text())


def initial_models(cfg: BaseTrainConfig, tokenizer, device: str):
    """(text_encoder, unet): fresh from config, or the weights of ``--init-from``."""
    if cfg.init_from is None:
        torch.manual_seed(cfg.seed)
        return build_text_encoder(tokenizer).to(device), build_unet().to(device)
    folder = Path(model_dir() if cfg.init_from == "toy" else cfg.init_from)
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    return text_encoder.to(device), UNet2DConditionModel.from_pretrained(folder / "unet").to(device)


def train_base(cfg: BaseTrainConfig) -> Path:
    """Run both stages (or continue a warm start / a saved state); returns the pipeline folder."""
    torch.set_num_threads(cfg.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    vae_rows: list[dict] = []
    vae_source = cfg.vae_path
    if vae_source is None and cfg.init_from is not None:
        vae_source = Path(model_dir() if cfg.init_from == "toy" else cfg.init_from) / "vae"
    if vae_source is not None:
        vae = AutoencoderKL.from_pretrained(vae_source).to(device)
    else:
        vae = train_vae(cfg.vae_minutes, seed=cfg.seed, device=device, max_steps=cfg.vae_max_steps, log=vae_rows)
        vae.save_pretrained(out.parent / f"{out.name}_vae")  # reusable with --vae-path
    vae.requires_grad_(False).eval()

    tokenizer_files = out.parent / f"_{out.name}_tokenizer_build"
    tokenizer = build_tokenizer(tokenizer_files)
    text_encoder, unet = initial_models(cfg, tokenizer, device)
    scheduler = build_scheduler()
    ema_text, ema_unet = copy.deepcopy(text_encoder).eval(), copy.deepcopy(unet).eval()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    modules = {"unet": unet, "text_encoder": text_encoder, "ema_unet": ema_unet, "ema_text_encoder": ema_text}
    loss_rows, eval_rows, smooth, step = [], [], None, 0
    saved = state_dir(cfg)
    if cfg.resume and ((saved / "meta.json").is_file() or saved.with_name(saved.name + ".old").is_dir()):
        meta = load_state(saved, modules, optimizer)
        step, smooth, loss_rows, eval_rows = meta["step"], meta["smooth"], meta["loss_rows"], meta["eval_rows"]
        generator.set_state(torch.tensor(meta["generator"], dtype=torch.uint8))
        print(f"resumed from {saved} at step {step}", flush=True)
    first_step = step
    start = last_eval = last_save = time.time()

    def checkpoint() -> None:
        meta = {
            "step": step, "smooth": smooth, "loss_rows": loss_rows, "eval_rows": eval_rows,
            "generator": generator.get_state().tolist(), "config": str(asdict(cfg)),
        }  # fmt: skip
        save_state(saved, modules, optimizer, meta)

    def evaluate_and_save(final: bool = False) -> None:
        minutes = (time.time() - start) / 60
        components = dict(
            vae=vae, text_encoder=ema_text, tokenizer=tokenizer, unet=ema_unet,
            scheduler=sampling_scheduler(scheduler),
        )  # fmt: skip
        row = {"step": step, "minutes": round(minutes, 2), "images": (step - first_step) * cfg.batch_size}
        if cfg.eval_images > 0 and ORACLE_FILE.is_file():  # looked up each time: may be trained alongside
            oracle = load_oracle()
            pipe = assemble_sd_pipeline(**components)
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

    with stop_on_signals() as stop:
        while time.time() - start < cfg.unet_minutes * 60 and (cfg.max_steps is None or step < cfg.max_steps):
            if stop["signal"] is not None:  # SIGINT/SIGTERM: save and finish; --resume continues
                print(f"stopped by signal {stop['signal']} at step {step}; saving", flush=True)
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            pixels, captions = training_batch(cfg, step)
            models = (vae, tokenizer, text_encoder, unet, scheduler)
            loss = denoising_loss(*models, pixels, captions, generator, cfg.min_snr_gamma)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            decay = cfg.ema_decay if cfg.init_from else min(cfg.ema_decay, (1 + step) / (10 + step))
            ema_update(ema_unet, unet, decay)
            ema_update(ema_text, text_encoder, decay)
            smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
            if step % 50 == 0:
                minutes = (time.time() - start) / 60
                loss_rows.append({"step": step, "minutes": round(minutes, 3), "loss": round(smooth, 5)})
                print(
                    f"step {step:6d}  loss {smooth:.4f}  lr {learning_rate(cfg, step):.2e}  {minutes:6.1f} min",
                    flush=True,
                )
            step += 1
            if time.time() - last_save > cfg.checkpoint_every * 60:
                checkpoint()
                last_save = time.time()
            if time.time() - last_eval > cfg.eval_every * 60:
                evaluate_and_save()
                last_eval = time.time()
    checkpoint()
    evaluate_and_save(final=True)
    shutil.rmtree(tokenizer_files, ignore_errors=True)
    return out


def parse_args(argv: list[str] | None = None) -> BaseTrainConfig:
    """Command-line flags -> ``BaseTrainConfig`` (one flag per field, same defaults)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for spec in fields(BaseTrainConfig):
        value = spec.default
        flag, text = "--" + spec.name.replace("_", "-"), f"{spec.metadata['help']} (default: {value})"
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", help=spec.metadata["help"])
            continue
        kind = type(value) if value is not None else {"vae_path": Path, "init_from": str}.get(spec.name, int)
        kind = Path if isinstance(value, Path) else kind
        parser.add_argument(flag, type=kind, default=value, help=text)
    return BaseTrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``scripts/train_toy_model.py``."""
    print(f"wrote {train_base(parse_args(argv))}")


if __name__ == "__main__":
    main()
