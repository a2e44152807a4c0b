"""Feature extractors: ``nn.Module``s with one input contract, images in, (N, d) features out.

Input contract (every extractor): a list of PIL images (any mode; converted to RGB) or a uint8
tensor (N, 3, H, W). Output: (N, d) float32 features on the CPU. Each extractor preprocesses
exactly as its model's own image processor does (transformers' PIL backend, no torchvision):

| extractor | default weights | preprocessing | features |
| --- | --- | --- | --- |
| ``CLIPFeatures`` | openai/clip-vit-large-patch14 | short side -> 224 bicubic, center crop 224, CLIP mean/std | projected image embedding (768) |
| ``DINOFeatures`` | facebook/dino-vits16 | resize to 224 x 224 bilinear (aspect not kept), ImageNet mean/std | CLS token after the last norm (384) |
| ``DINOv2Features`` | facebook/dinov2-base | short side -> 256 bicubic, center crop 224, ImageNet mean/std | CLS token after the last norm (768) |
| ``InceptionFeatures`` | local FID checkpoint | [0, 1] -> bilinear 299 x 299 (torch, no antialias) -> [-1, 1] | pool3 (2048) |

The sizes above are those of the default checkpoints; the processor saved with a model decides.
Images of any size go in (32 px toy images are upscaled). ``toy_oracle.ToyOracleFeatures`` follows
the same contract for toy-world images, offline. Hub ids load from the local cache first; see
``hub.py`` for what happens when a model is missing there.
The Inception resize follows pytorch-fid (the usual PyTorch FID), not clean-fid's PIL bicubic,
so numbers are comparable with pytorch-fid's, not with clean-fid's "clean" mode.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from dreamdist.evaluation import hub, inception
from dreamdist.evaluation.defaults import DEFAULT_CLIP, DEFAULT_DINO, DEFAULT_DINOV2
from dreamdist.evaluation.hub import FeatureModelError

Images = Sequence[Image.Image] | torch.Tensor


@dataclass(frozen=True)
class FeatureInfo:
    """What identifies a feature space: a cache key part and a report entry.

    Attributes:
        kind: ``clip``, ``dino``, ``dinov2``, ``inception`` or ``toy-oracle`` (``toy_oracle.py``).
        model_id: hub id or local path as given.
        weights: fingerprint of the weights actually loaded (hub commit, file stats or sha256).
        preprocessing: canonical JSON of the preprocessing settings.
        dim: feature size d.
    """

    kind: str
    model_id: str
    weights: str
    preprocessing: str
    dim: int


def as_pil_images(images: Images) -> list[Image.Image]:
    """The input contract: PIL images (converted to RGB) or a uint8 (N, 3, H, W) tensor -> PIL list."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"image tensors must be uint8 (N, 3, H, W); got {images.dtype} {tuple(images.shape)}. "
                "Convert floats in [0, 1] with (x * 255).round().to(torch.uint8)"
            )
        arrays = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
        return [Image.fromarray(array) for array in arrays]
    converted = []
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"image {index} is a {type(image).__name__}; expected a PIL image or a uint8 tensor")
        converted.append(image if image.mode == "RGB" else image.convert("RGB"))
    return converted


# ---------------------------------------------------------------------------------------------
# loading helpers (shared functions, not a base class)


def _load_error(what: str, model_id: str, flag: str, exc: Exception) -> FeatureModelError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if hub.is_local(model_id):
        fix = f"pass a folder written by save_pretrained (config.json, weights, preprocessor_config.json) with {flag}"
    else:
        fix = (
            f"if this machine is offline, download {model_id} where there is a network "
            f"(`hf download {model_id} --local-dir DIR`) and pass DIR with {flag}"
        )
    return FeatureModelError(f"could not load the {what} model {model_id!r} ({reason}); {fix}")


def _from_pretrained(cls, model_id: str, what: str, flag: str, local_files_only: bool, **kwargs):
    """``cls.from_pretrained`` with an error that names the model and how to pass a local copy.

    A hub id is read from the local HF cache first (no network). Only when that fails is the hub
    asked, and only after ``hub.offline_reason`` found it reachable: offline, the error comes at
    once instead of after huggingface_hub's minute of retries.
    """
    if hub.is_local(model_id):
        folder = Path(model_id).expanduser()
        if not folder.is_dir():
            raise FeatureModelError(
                f"the {what} model folder {model_id!r} does not exist; pass a folder written by "
                f"save_pretrained with {flag}, or a hub id"
            )
        try:
            return cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError) as exc:
            raise _load_error(what, model_id, flag, exc) from None
    try:
        return cls.from_pretrained(model_id, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        cached_error = exc  # not (fully) in the cache, or not loadable: the hub may still help
    reason = hub.offline_reason(local_files_only)
    if reason is not None:
        if hub.in_local_cache(model_id):  # cached but incomplete or broken: say what failed
            raise _load_error(what, model_id, flag, cached_error) from None
        raise hub.unavailable_error([hub.ModelNeed(what, model_id, flag)], reason) from None
    try:
        return cls.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(what, model_id, flag, exc) from None


def _load_image_processor(model_id: str, what: str, flag: str, local_files_only: bool):
    """The model's own image processor, PIL backend (transformers >= 5 would want torchvision)."""
    backend = {"backend": "pil"} if int(transformers.__version__.split(".")[0]) >= 5 else {"use_fast": False}
    return _from_pretrained(transformers.AutoImageProcessor, model_id, what, flag, local_files_only, **backend)


def _processor_json(processor) -> str:
    """Canonical JSON of an image processor's settings (cache key, report)."""
    settings = json.loads(processor.to_json_string())
    settings.pop("processor_class", None)
    return json.dumps(settings, sort_keys=True)


def _weights_fingerprint(model_id: str, config) -> str:
    """What identifies the loaded weights: for a local folder, names, sizes and mtimes of its files;
    for a hub id, the commit of the cached snapshot (its folder name in the HF cache)."""
    folder = Path(model_id).expanduser()
    if folder.is_dir():
        digest = hashlib.sha256()
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix in (".safetensors", ".bin", ".json", ".pth", ".pt"):
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return "files:" + digest.hexdigest()[:16]
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_id, "config.json")  # .../snapshots/<commit>/config.json
    except Exception:  # an unusual id or cache layout: fall back below
        cached = None
    if isinstance(cached, str):
        return "commit:" + Path(cached).parent.name
    commit = getattr(config, "_commit_hash", None)  # transformers 4
    return f"commit:{commit}" if commit else "unknown"


def _pixel_values(processor, images: Images, device: torch.device) -> torch.Tensor:
    """(B, 3, H, W) float32 model input from the processor."""
    batch = processor(images=as_pil_images(images), return_tensors="pt")
    return batch["pixel_values"].to(device=device, dtype=torch.float32)


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


# ---------------------------------------------------------------------------------------------
# extractors


class CLIPFeatures(nn.Module):
    """CLIP image embeddings (``forward``) and text embeddings (``encode_text``), projected.

    Args:
        model_id: hub id or local folder of a ``CLIPModel`` with its image processor (and
            tokenizer, needed only by ``encode_text``).
        device: where to run (default: CUDA when available).
        local_files_only: never touch the network (hub ids must be in the local HF cache).
    """

    kind = "clip"

    def __init__(self, model_id: str = DEFAULT_CLIP, device=None, local_files_only: bool = False):
        super().__init__()
        flag = "--clip-model"
        self.model_id, self._local_only = str(model_id), local_files_only
        model = _from_pretrained(transformers.CLIPModel, self.model_id, "CLIP", flag, local_files_only)
        self.processor = _load_image_processor(self.model_id, "CLIP", flag, local_files_only)
        self.tokenizer = None  # loaded on the first encode_text
        self.vision, self.visual_projection = model.vision_model, model.visual_projection
        self.text, self.text_projection = model.text_model, model.text_projection
        self.info = FeatureInfo(
            self.kind,
            self.model_id,
            _weights_fingerprint(self.model_id, model.config),
            _processor_json(self.processor),
            model.config.projection_dim,
        )
        self.eval().to(_device(device))

    @torch.no_grad()
    def forward(self, images: Images) -> torch.Tensor:
        """Images -> (N, projection_dim) image embeddings (not normalised)."""
        device = self.visual_projection.weight.device
        pooled = self.vision(pixel_values=_pixel_values(self.processor, images, device)).pooler_output  # (N, h)
        return self.visual_projection(pooled).float().cpu()

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> (N, projection_dim) text embeddings (truncated to the model's context)."""
        if self.tokenizer is None:
            self.tokenizer = _from_pretrained(
                transformers.AutoTokenizer, self.model_id, "CLIP tokenizer", "--clip-model", self._local_only
            )
        max_length = self.text.config.max_position_embeddings
        tokens = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        device = self.text_projection.weight.device
        pooled = self.text(
            input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
        ).pooler_output  # (N, h) features of the EOS token
        return self.text_projection(pooled).float().cpu()


def _load_vit(module: nn.Module, model_cls, model_id, name: str, flag: str, device, local_files_only: bool, **kw):
    """Give a ViT-style extractor its ``model``, ``processor`` and ``info``, then move it to ``device``."""
    module.model_id = str(model_id)
    module.model = _from_pretrained(model_cls, module.model_id, name, flag, local_files_only, **kw)
    module.processor = _load_image_processor(module.model_id, name, flag, local_files_only)
    module.info = FeatureInfo(
        module.kind,
        module.model_id,
        _weights_fingerprint(module.model_id, module.model.config),
        _processor_json(module.processor),
        module.model.config.hidden_size,
    )
    module.eval().to(_device(device))


class DINOFeatures(nn.Module):
    """DINO v1 ViT features: the CLS token after the final layer norm (``ViTModel``).

    Args:
        model_id: hub id or local folder of a ``ViTModel`` trained with DINO.
        device: where to run (default: CUDA when available).
        local_files_only: never touch the network.
    """

    kind = "dino"

    def __init__(self, model_id: str = DEFAULT_DINO, device=None, local_files_only: bool = False):
        super().__init__()
        _load_vit(
            self,
            transformers.ViTModel,
            model_id,
            "DINO",
            "--dino-model",
            device,
            local_files_only,
            add_pooling_layer=False,
        )

    @torch.no_grad()
    def forward(self, images: Images) -> torch.Tensor:
        """Images -> (N, hidden_size) CLS features."""
        pixels = _pixel_values(self.processor, images, self.model.device)
        return self.model(pixel_values=pixels).last_hidden_state[:, 0].float().cpu()  # (N, h)


class DINOv2Features(nn.Module):
    """DINOv2 features: the CLS token after the final layer norm (``Dinov2Model.pooler_output``).

    Args:
        model_id: hub id or local folder of a ``Dinov2Model``.
        device: where to run (default: CUDA when available).
        local_files_only: never touch the network.
    """

    kind = "dinov2"

    def __init__(self, model_id: str = DEFAULT_DINOV2, device=None, local_files_only: bool = False):
        super().__init__()
        _load_vit(self, transformers.Dinov2Model, model_id, "DINOv2", "--dinov2-model", device, local_files_only)

    @torch.no_grad()
    def forward(self, images: Images) -> torch.Tensor:
        """Images -> (N, hidden_size) CLS features."""
        pixels = _pixel_values(self.processor, images, self.model.device)
        return self.model(pixel_values=pixels).pooler_output.float().cpu()  # (N, h)


class InceptionFeatures(nn.Module):
    """FID InceptionV3 pool3 features (2048-d) from a local checkpoint (see ``inception.py``).

    Args:
        weights: path to ``pt_inception-2015-12-05-6726825d.pth`` or a ``.safetensors`` copy.
        device: where to run (default: CUDA when available).
    """

    kind = "inception"
    PREPROCESSING = {
        "input": "uint8 RGB / 255",
        "resize": [inception.INPUT_SIZE, inception.INPUT_SIZE],
        "resample": "torch bilinear, align_corners=False, no antialias (pytorch-fid)",
        "range": [-1, 1],
    }

    def __init__(self, weights: str | Path, device=None):
        super().__init__()
        self.network, provenance = inception.load_fid_inception(weights)
        self.standard_weights = provenance["standard"] == "true"
        self.info = FeatureInfo(
            self.kind,
            str(weights),
            "sha256:" + provenance["sha256"],
            json.dumps(self.PREPROCESSING, sort_keys=True),
            inception.FEATURE_DIM,
        )
        self.eval().to(_device(device))

    @torch.no_grad()
    def forward(self, images: Images) -> torch.Tensor:
        """Images -> (N, 2048) pool features."""
        device = self.network.Conv2d_1a_3x3.conv.weight.device
        size = (inception.INPUT_SIZE, inception.INPUT_SIZE)
        batch = []
        for image in as_pil_images(images):  # images may differ in size: resize one by one
            pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).to(device)  # (H, W, 3)
            pixels = pixels.permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W) in [0, 1]
            batch.append(F.interpolate(pixels, size=size, mode="bilinear", align_corners=False))
        x = torch.cat(batch) * 2 - 1  # (N, 3, 299, 299) in [-1, 1]
        return self.network(x).float().cpu()


# ---------------------------------------------------------------------------------------------


def extract_features(
    extractor: nn.Module, images: Images, batch_size: int = 32, progress: bool = True, desc: str = ""
) -> torch.Tensor:
    """Run an extractor over images in batches, with a progress bar.

    Args:
        extractor: any module of this file (images -> (B, d)).
        images: the input contract (PIL list or uint8 (N, 3, H, W)).
        batch_size: images per forward pass.
        progress: show a tqdm bar (on stderr).
        desc: bar label.

    Returns:
        (N, d) float32 CPU features, rows in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    total = len(images)
    if total == 0:
        raise ValueError("no images to extract features from")
    chunks = []
    with tqdm(total=total, desc=desc or extractor.kind, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, total, batch_size):
            batch = images[start : start + batch_size]
            chunks.append(extractor(batch))  # (b, d)
            bar.update(len(batch))
    return torch.cat(chunks)
