"""Train the toy flow-matching model ``toy-flow`` and save it as a diffusers ``FluxPipeline`` folder.

    python scripts/train_toy_flow.py --threads 2 --minutes 120 --resume          # in the background
    python -m dreamdist.toyworld.quality src/dreamdist/toyworld/assets/toy-flow   # the base-model bar

The VAE is the toy model's (frozen; ``toy`` and ``toy-flow`` share a latent space). The
transformer, the T5 encoder and the CLIP encoder (its pooled feature) train jointly on captioned
renders of the *seen* combos with rectified flow: ``x_t = (1 - t) x_0 + t eps``, target
``eps - x_0``, ``t`` logit-normal (SD3's density), 10 % empty captions (for classifier-free
guidance) and 15 % attribute dropout in captions; AdamW with warm-up, EMA weights. Checkpoints,
``--resume``, evaluation by the oracle and the curves work as for the toy UNet model
(``train_base``); every ``--eval-every`` minutes the EMA model is written to ``--out``.
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
from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel, T5EncoderModel

from dreamdist.toyworld import model_dir
from dreamdist.toyworld.curves import plot_curves, write_csv
from dreamdist.toyworld.flow_components import (
    GENERATION_DEFAULTS,
    MAX_T5_TOKENS,
    build_clip,
    build_scheduler,
    build_t5,
    build_tokenizers,
    build_transformer,
    flow_vae,
)
from dreamdist.toyworld.oracle import ORACLE_FILE, load_oracle
from dreamdist.toyworld.quality import oracle_accuracy
from dreamdist.toyworld.train_base import ema_update, learning_rate, load_state, save_state, training_batch
from dreamdist.training.loop import stop_on_signals

DEFAULT_OUT = Path(__file__).parent / "assets" / "toy-flow"


@dataclass
class FlowTrainConfig:
    """Settings of the toy flow model's training run (every field is a command-line flag)."""

    out: Path = field(default=DEFAULT_OUT, metadata={"help": "pipeline folder written at every evaluation"})
    seed: int = field(default=0, metadata={"help": "seeds init, data, noise and timesteps"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    device: str = field(default="auto", metadata={"help": '"auto" = cuda when present, else cpu'})
    minutes: float = field(default=120.0, metadata={"help": "time budget of this invocation"})
    max_steps: int | None = field(default=None, metadata={"help": "step cap (reproducible stopping point)"})
    init_from: str | None = field(default=None, metadata={"help": "warm start from a toy-flow pipeline folder"})
    resume: bool = field(default=False, metadata={"help": "continue from <out>_state/ when it exists"})
    checkpoint_every: float = field(default=5.0, metadata={"help": "minutes between training-state checkpoints"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW peak learning rate (after warmup)"})
    lr_schedule: str = field(default="constant", metadata={"help": 'constant, or "cosine" (needs --max-steps)'})
    warmup_steps: int = field(default=200, metadata={"help": "linear learning-rate warmup steps"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay (ramped up as (1 + step) / (10 + step))"})
    logit_mean: float = field(default=0.0, metadata={"help": "mean of the logit-normal timestep density"})
    logit_std: float = field(default=1.0, metadata={"help": "std of the logit-normal timestep density"})
    attribute_dropout: float = field(default=0.15, metadata={"help": "chance of leaving each attribute out"})
    empty_caption: float = field(default=0.10, metadata={"help": "chance of an empty caption (for CFG)"})
    eval_every: float = field(default=15.0, metadata={"help": "minutes between evaluations + saves"})
    eval_images: int = field(default=48, metadata={"help": "images per split per evaluation (0: save only)"})

    def __post_init__(self) -> None:
        """Reject contradictory flags by name."""
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"--lr-schedule must be constant or cosine, not {self.lr_schedule!r}")
        if self.lr_schedule == "cosine" and not self.max_steps:
            raise ValueError("--lr-schedule cosine decays over --max-steps; give --max-steps")


def encode_captions(tokenizers, clip, t5, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions -> (T5 features (B, MAX_T5_TOKENS, 128), CLIP pooled (B, 64)), as FluxPipeline encodes them."""
    clip_tok, t5_tok = tokenizers
    device = t5.device
    clip_ids = clip_tok(captions, padding="max_length", max_length=clip_tok.model_max_length, truncation=True,
                        return_tensors="pt").input_ids  # fmt: skip
    t5_ids = t5_tok(captions, padding="max_length", max_length=MAX_T5_TOKENS, truncation=True,
                    return_tensors="pt").input_ids  # fmt: skip
    pooled = clip(clip_ids.to(device), output_hidden_states=False).pooler_output  # (B, 64)
    hidden = t5(t5_ids.to(device), output_hidden_states=False)[0]  # (B, L, 128)
    return hidden, pooled


def flow_loss(
    vae, tokenizers, clip, t5, transformer, pixels: torch.Tensor, captions: list[str], generator, cfg
) -> torch.Tensor:
    """Rectified-flow loss of one captioned batch: ``|| transformer(x_t, t, c) - (eps - x_0) ||^2``.

    Args:
        pixels: (B, 3, 32, 32) in [-1, 1]; captions: B strings ("" for the unconditional ones).
        generator: draws the latent sample, the noise and the timesteps, in that order.
    """
    device = transformer.device
    with torch.no_grad():
        latents = vae.encode(pixels.to(device)).latent_dist.sample(generator)  # (B, 4, 16, 16)
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    batch, channels, height, width = latents.shape
    noise = torch.randn(latents.shape, generator=generator, device=device)
    t = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(batch, generator=generator, device=device))  # (B,)
    noisy = (1 - t[:, None, None, None]) * latents + t[:, None, None, None] * noise
    hidden, pooled = encode_captions(tokenizers, clip, t5, captions)
    packed = FluxPipeline._pack_latents(noisy, batch, channels, height, width)  # (B, h/2 * w/2, 4C)
    image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, device, noisy.dtype)
    text_ids = torch.zeros(hidden.shape[1], 3, device=device, dtype=noisy.dtype)
    pred = transformer(
        hidden_states=packed, timestep=t, pooled_projections=pooled, encoder_hidden_states=hidden,
        txt_ids=text_ids, img_ids=image_ids, return_dict=False,
    )[0]  # fmt: skip
    target = FluxPipeline._pack_latents(noise - latents, batch, channels, height, width)
    return (pred - target).pow(2).mean()


def assemble(vae, tokenizers, clip, t5, transformer) -> FluxPipeline:
    """The parts as a ``FluxPipeline`` (progress bar off)."""
    pipe = FluxPipeline(
        scheduler=build_scheduler(), vae=vae, text_encoder=clip, tokenizer=tokenizers[0],
        text_encoder_2=t5, tokenizer_2=tokenizers[1], transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_flow_pipeline(pipe: FluxPipeline, out: Path, tokenizer_files: Path) -> None:
    """Write the pipeline folder (safetensors), replacing ``out`` only once complete."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for config in tmp.glob("*/config.json"):
        values = json.loads(config.read_text())
        if values.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    for name in ("vocab.json", "merges.txt"):  # slow-tokenizer loaders read these
        if (tokenizer_files / "tokenizer" / name).is_file():
            shutil.copy(tokenizer_files / "tokenizer" / name, tmp / "tokenizer" / name)
    (tmp / "dreamdist.json").write_text(json.dumps(GENERATION_DEFAULTS, indent=1))
    for extra in ("training_loss.csv", "training_eval.csv", "training_curve.png", "training_config.json"):
        if (out / extra).exists():
            shutil.copy(out / extra, tmp / extra)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def initial_models(cfg: FlowTrainConfig, tokenizers, device: str):
    """(clip, t5, transformer): fresh from config, or the weights of ``--init-from``."""
    if cfg.init_from is None:
        torch.manual_seed(cfg.seed)
        return build_clip(tokenizers[0]).to(device), build_t5(tokenizers[1]).to(device), build_transformer().to(device)
    folder = Path(cfg.init_from)
    fp32 = {"torch_dtype": torch.float32}  # a warm start stored in half precision trains in fp32
    return (
        CLIPTextModel.from_pretrained(folder / "text_encoder", **fp32).to(device),
        T5EncoderModel.from_pretrained(folder / "text_encoder_2", **fp32).to(device),
        FluxTransformer2DModel.from_pretrained(folder / "transformer", **fp32).to(device),
    )


def train_flow(cfg: FlowTrainConfig) -> Path:
    """Train (or continue) the toy flow model; returns the pipeline folder."""
    torch.set_num_threads(cfg.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    vae = flow_vae(AutoencoderKL.from_pretrained(model_dir() / "vae")).to(device)
    vae.requires_grad_(False).eval()
    tokenizer_files = out.parent / f"_{out.name}_tokenizer_build"
    tokenizers = build_tokenizers(tokenizer_files)
    clip, t5, transformer = initial_models(cfg, tokenizers, device)
    ema = {
        "clip": copy.deepcopy(clip).eval(),
        "t5": copy.deepcopy(t5).eval(),
        "transformer": copy.deepcopy(transformer).eval(),
    }
    params = [p for module in (clip, t5, transformer) for p in module.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    modules = {"clip": clip, "t5": t5, "transformer": transformer, **{f"ema_{k}": v for k, v in ema.items()}}
    loss_rows, eval_rows, smooth, step = [], [], None, 0
    saved = out.parent / f"{out.name}_state"
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
        pipe = assemble(vae, tokenizers, ema["clip"], ema["t5"], ema["transformer"])
        row = {
            "step": step,
            "minutes": round((time.time() - start) / 60, 2),
            "images": (step - first_step) * cfg.batch_size,
        }
        if cfg.eval_images > 0 and ORACLE_FILE.is_file():
            oracle = load_oracle()
            sampler = {k: v for k, v in GENERATION_DEFAULTS.items()}
            for split in ("seen", "held_out"):
                scores = oracle_accuracy(pipe, oracle, split=split, n=cfg.eval_images, seed=1000 + step, **sampler)
                row.update({f"{split}_{k}": round(v, 4) for k, v in scores.items()})
            print("eval", json.dumps(row), flush=True)
            eval_rows.append(row)
        write_csv(loss_rows, out / "training_loss.csv") if out.is_dir() else None
        save_flow_pipeline(pipe, out, tokenizer_files)
        write_csv(loss_rows, out / "training_loss.csv")
        write_csv(eval_rows, out / "training_eval.csv")
        plot_curves(loss_rows, eval_rows, out / "training_curve.png")
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
        (out / "training_config.json").write_text(json.dumps({**config, "final": final, **row}, indent=1))

    with stop_on_signals() as stop:
        while time.time() - start < cfg.minutes * 60 and (cfg.max_steps is None or step < cfg.max_steps):
            if stop["signal"] is not None:
                print(f"stopped by signal {stop['signal']} at step {step}; saving", flush=True)
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, step)
            pixels, captions = training_batch(cfg, step)
            loss = flow_loss(vae, tokenizers, clip, t5, transformer, pixels, captions, generator, cfg)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            decay = cfg.ema_decay if cfg.init_from else min(cfg.ema_decay, (1 + step) / (10 + step))
            for name, module in (("clip", clip), ("t5", t5), ("transformer", transformer)):
                ema_update(ema[name], module, decay)
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


def parse_args(argv: list[str] | None = None) -> FlowTrainConfig:
    """Command-line flags -> ``FlowTrainConfig`` (one flag per field, same defaults)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for spec in fields(FlowTrainConfig):
        value = spec.default
        flag = "--" + spec.name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", help=spec.metadata["help"])
            continue
        kind = (
            Path
            if isinstance(value, Path)
            else type(value)
            if value is not None
            else {"init_from": str}.get(spec.name, int)
        )
        parser.add_argument(flag, type=kind, default=value, help=f"{spec.metadata['help']} (default: {value})")
    return FlowTrainConfig(**vars(parser.parse_args(argv)))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``scripts/train_toy_flow.py``."""
    print(f"wrote {train_flow(parse_args(argv))}")


if __name__ == "__main__":
    main()
