"""Evaluate a generated image set against a reference set: features (cached) -> metrics -> report.

Which features each metric uses (METHODS.md section 7):

| metric | features |
| --- | --- |
| fid, kid | InceptionV3 pool (2048) |
| clip-i, clip-t, cmmd | CLIP image (and text) embeddings |
| dino | DINO v1 ViT-S/16 CLS |
| density, coverage, precision, recall, fd-dinov2, vendi | DINOv2 CLS (k-NN radius with k = 5) |

With ``features="toy-oracle"`` (or ``"toy-attributes"``) every metric is computed in one space of
the toy world's oracle instead (``toy_oracle.py``): no download, meaningful for toy-world images
only, no CLIP-T (no text side). When ``vendi`` is asked for, the report's ``vendi`` section also
holds the Vendi score of both sets in every feature space the run extracted; its ``kid`` section
holds KID's std over subsets and the subset settings.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import torch

from dreamdist.evaluation import features as F
from dreamdist.evaluation import hub
from dreamdist.evaluation import metrics as M
from dreamdist.evaluation.cache import cached_features
from dreamdist.evaluation.defaults import (
    DEFAULT_METRICS,
    FEATURE_SETS,
    FRECHET,
    MANIFOLD,
    METRICS,
    TOY_DEFAULT_METRICS,
    TOY_SETS,
    feature_space,
    metric_name,
)
from dreamdist.evaluation.images import ImageSet, small_images_note

REPORT_FORMAT = 1
KID_SUBSETS, KID_SUBSET_SIZE, KID_SEED = 100, 1000, 0  # Binkowski et al.'s reference code: 100 x 1000


@dataclass
class EvalConfig:
    """Settings of one evaluation.

    Attributes:
        metrics: names from ``METRICS`` (None: the defaults of ``features``).
        features: ``standard`` (each metric in its usual model's space), ``toy-oracle`` or
            ``toy-attributes`` (all in one space of the toy world's oracle: offline, for toy-world images).
        k: nearest-neighbour rank of density/coverage/precision/recall radii.
        boundary: ``inclusive`` (closed k-NN balls, paper) or ``exclusive`` (open, the prdc package).
        prompt: text for CLIP-T, overriding per-image manifest prompts.
        clip_model, dino_model, dinov2_model: hub ids or local folders.
        inception_weights: local FID Inception checkpoint (needed by ``fid``).
        device: ``cpu``, ``cuda``, ... (None: CUDA when available).
        batch_size: images per forward pass.
        cache_dir: feature cache folder; None disables the cache.
        local_files_only: never reach the network for model weights.
        progress: show progress bars.
    """

    metrics: tuple[str, ...] | None = None
    features: str = "standard"
    k: int = 5
    boundary: str = "inclusive"
    prompt: str | None = None
    clip_model: str = F.DEFAULT_CLIP
    dino_model: str = F.DEFAULT_DINO
    dinov2_model: str = F.DEFAULT_DINOV2
    inception_weights: str | None = None
    device: str | None = None
    batch_size: int = 32
    cache_dir: str | Path | None = None
    local_files_only: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.features not in FEATURE_SETS:
            raise ValueError(f"--features must be one of {', '.join(FEATURE_SETS)}; got {self.features!r}")
        toy = self.features in TOY_SETS
        if self.metrics is None:
            self.metrics = TOY_DEFAULT_METRICS if toy else DEFAULT_METRICS
        self.metrics = tuple(dict.fromkeys(metric_name(m) for m in self.metrics))  # fd_dinov2 = fd-dinov2
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise ValueError(f"unknown metric(s) {unknown or '(none given)'}; choose from {','.join(METRICS)}")
        if self.k < 1:
            raise ValueError(f"--k must be >= 1; got {self.k}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.boundary not in ("inclusive", "exclusive"):
            raise ValueError(f"--boundary must be inclusive or exclusive; got {self.boundary!r}")
        if toy and "clip-t" in self.metrics:
            raise ValueError(
                f"clip-t needs a text encoder and --features {self.features} has none: leave clip-t out of "
                "--metrics (and --prompt off), or use --features standard"
            )
        if self.features == "toy-attributes" and self.boundary == "exclusive":
            raise ValueError(
                "--features toy-attributes puts every image of one attribute triple on one point, so k-NN radii "
                "are 0 and open balls hold nothing: use --boundary inclusive (the default)"
            )
        inception = [m for m in self.metrics if feature_space(m) == "inception"]
        if inception and not toy and not self.inception_weights:
            names = " and ".join(inception)
            raise ValueError(
                f"{names} need{'s' if len(inception) == 1 else ''} the FID Inception weights, which are never "
                "downloaded: pass the path of pt_inception-2015-12-05-6726825d.pth (or a .safetensors copy) with "
                f"--inception-weights or DREAMDIST_INCEPTION_WEIGHTS, or leave {names} out of --metrics"
            )


def check_counts(config: EvalConfig, n_real: int, n_generated: int) -> None:
    """Raise ``ValueError`` before any extraction when a set is too small for a requested metric."""
    needs = []
    for metric in (m for m in config.metrics if m in (*FRECHET, "kid")):  # a covariance / an unbiased MMD
        needs += [(metric, "reference", n_real, 2), (metric, "generated", n_generated, 2)]
    if any(m in config.metrics for m in MANIFOLD):
        needs.append(("density/coverage/precision", "reference", n_real, config.k + 1))
    if "recall" in config.metrics:
        needs.append(("recall", "generated", n_generated, config.k + 1))
    for metric, side, have, need in needs:
        if have < need:
            raise ValueError(
                f"{metric} needs at least {need} {side} images (k={config.k}) but {have} usable were found; "
                f"add images, lower --k, or leave {metric} out of --metrics"
            )


def clip_t_prompts(config: EvalConfig, generated: ImageSet) -> tuple[list[str], str]:
    """The prompt of each generated image for CLIP-T and where it came from."""
    if config.prompt is not None:
        return [config.prompt], "--prompt"
    prompts = generated.prompts or []
    missing = sum(p is None for p in prompts) if prompts else len(generated)
    if missing:
        raise ValueError(
            f'clip-t needs a prompt: {missing} of {len(generated)} generated images have no "prompt" in '
            f"{generated.folder / 'manifest.jsonl'}; pass --prompt TEXT"
        )
    return list(prompts), "manifest"


def model_needs(config: EvalConfig) -> list[hub.ModelNeed]:
    """The hub-or-folder models ``config`` will load (Inception weights and the toy oracle are files)."""
    models = {"clip": config.clip_model, "dino": config.dino_model, "dinov2": config.dinov2_model}
    return hub.model_needs(config.metrics, config.features, models)


def _build(kind: str, config: EvalConfig):
    local = config.local_files_only
    if kind in TOY_SETS:
        from dreamdist.evaluation.toy_oracle import ToyOracleFeatures

        return ToyOracleFeatures(kind, device=config.device)
    if kind == "clip":
        return F.CLIPFeatures(config.clip_model, config.device, local_files_only=local)
    if kind == "dino":
        return F.DINOFeatures(config.dino_model, config.device, local_files_only=local)
    if kind == "dinov2":
        return F.DINOv2Features(config.dinov2_model, config.device, local_files_only=local)
    return F.InceptionFeatures(config.inception_weights, config.device)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("dreamdist", "torch", "transformers", "numpy", "safetensors", "pillow", "scipy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _side(image_set: ImageSet) -> dict:
    return {
        "folder": str(image_set.folder),
        "count": len(image_set),
        "skipped": [{"file": str(path), "reason": why} for path, why in image_set.report.skipped],
        "sha256": image_set.hash,
        "manifest": bool(image_set.records),
    }


def evaluate(real: ImageSet, generated: ImageSet, config: EvalConfig, labels: dict | None = None) -> dict:
    """Compute ``config.metrics`` of ``generated`` against ``real``; return the report dict.

    Features are extracted once per (model, image set) and cached; models are loaded one at a
    time and released before the next, so peak memory is one model.

    Args:
        real: the reference set R.
        generated: the generated set G.
        config: metrics and models.
        labels: ``method`` / ``scenario`` names for ``compare`` (stored as given).

    Returns:
        The report: ``metrics`` (name -> float) plus everything needed to reproduce them.
    """
    check_counts(config, len(real), len(generated))
    prompts, prompt_source = clip_t_prompts(config, generated) if "clip-t" in config.metrics else ([], None)
    hub.require_available(model_needs(config), config.local_files_only)  # offline: fail now, not after retries
    kinds = list(dict.fromkeys(feature_space(m, config.features) for m in config.metrics))
    values: dict[str, float] = {}
    spaces: dict[str, dict] = {}
    sections: dict[str, dict] = {}  # "kid": std and subsets; "vendi": both sets' scores per feature space
    notes: list[str] = []
    if config.features == "standard":
        small = small_images_note({"reference": real, "generated": generated})
        notes += [small] if small else []
    for kind in kinds:
        extractor = _build(kind, config)
        wanted = [m for m in config.metrics if feature_space(m, config.features) == kind]
        feats, cached = {}, {}
        for side, image_set in (("real", real), ("generated", generated)):
            if side == "real" and wanted == ["clip-t"]:
                continue  # CLIP-T alone needs only the generated images
            feats[side], cached[side] = cached_features(
                extractor,
                image_set.images,
                image_set.hash,
                config.cache_dir,
                batch_size=config.batch_size,
                progress=config.progress,
                desc=f"{kind} {side}",
            )
        values.update(_metrics_of(wanted, feats, config, extractor, prompts, sections))
        if "vendi" in config.metrics:  # every space extracted, both sets: how diverse each looks there
            sections.setdefault("vendi", {})[kind] = {side: M.vendi_score(x) for side, x in feats.items()}
        info = extractor.info
        spaces[kind] = {
            "model_id": info.model_id,
            "weights": info.weights,
            "dim": info.dim,
            "preprocessing": info.preprocessing,
            "from_cache": cached,
        }
        if kind == "inception":
            spaces[kind]["standard_weights"] = extractor.standard_weights
            if not extractor.standard_weights:
                notes.append("FID uses non-standard Inception weights: not comparable with published FIDs")
        smallest = min(len(real), len(generated))
        for metric in (m for m in FRECHET if m in wanted and smallest < info.dim):
            name = "FID" if metric == "fid" else "FD-DINOv2"
            notes.append(
                f"{name} from {smallest} images in {info.dim}-d: covariances are rank-deficient and {name} is "
                f"biased upward; compare {name}s only across runs with the same image counts"
            )
        del extractor  # freed by reference counting before the next model loads (no cycles)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {
        "format": REPORT_FORMAT,
        "method": (labels or {}).get("method"),
        "scenario": (labels or {}).get("scenario"),
        "metrics": {name: values[name] for name in config.metrics},
        **sections,
        "real": _side(real),
        "generated": _side(generated),
        "features": spaces,
        "settings": {
            "metrics": list(config.metrics),
            "features": config.features,
            "k": config.k,
            "boundary": config.boundary,
            "prompt": config.prompt,
            "prompt_source": prompt_source,
            "device": str(F._device(config.device)),
        },
        "versions": _versions(),
        "notes": notes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }


def _metrics_of(
    wanted: list[str], feats: dict, config: EvalConfig, extractor, prompts: list[str], sections: dict
) -> dict[str, float]:
    """The metrics ``wanted`` from one feature space's ``real`` / ``generated`` features.

    KID's std over subsets and its settings go into ``sections["kid"]``.
    """
    out: dict[str, float] = {}
    for name in FRECHET:  # the same statistic, in Inception (FID) and DINOv2 space (Stein et al. 2023)
        if name in wanted:
            out[name] = M.frechet_distance(feats["real"], feats["generated"])
    if "kid" in wanted:
        generator = torch.Generator().manual_seed(KID_SEED)
        mean, std = M.kernel_inception_distance(
            feats["real"], feats["generated"], KID_SUBSETS, KID_SUBSET_SIZE, generator=generator
        )
        out["kid"] = mean
        subset_size = min(KID_SUBSET_SIZE, len(feats["real"]), len(feats["generated"]))
        sections["kid"] = {"std": std, "subsets": KID_SUBSETS, "subset_size": subset_size, "seed": KID_SEED}
    if "cmmd" in wanted:
        out["cmmd"] = M.cmmd(feats["real"], feats["generated"])
    if "vendi" in wanted:
        out["vendi"] = M.vendi_score(feats["generated"])
    for name in ("clip-i", "dino"):  # the same statistic, in CLIP and DINO space
        if name in wanted:
            out[name] = M.mean_cosine_similarity(feats["generated"], feats["real"])
    if "clip-t" in wanted:
        unique = list(dict.fromkeys(prompts))  # encode each distinct prompt once
        text = extractor.encode_text(unique)  # (P, d)
        position = {prompt: i for i, prompt in enumerate(unique)}
        rows = torch.tensor([position[p] for p in prompts])  # (N,) or (1,) for one --prompt
        out["clip-t"] = M.clip_t(feats["generated"], text[rows])
    manifold = [m for m in wanted if m in MANIFOLD]
    if manifold:
        values = M.manifold_metrics(
            feats["real"], feats["generated"], k=config.k, boundary=config.boundary, recall="recall" in manifold
        )
        out.update({m: values[m] for m in manifold})
    return out
