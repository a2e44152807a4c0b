"""Two-stage personalization (Zeng, Suganuma, Okatani, arXiv 2407.05312), METHODS.md §5.

Stage 1: textual inversion of a rare adjective token placed before the class noun ("a photo of
<rare> backpack"). Stage 2: the text encoder and the learned embedding frozen, the UNet fine-tuned
on the same prompt, without prior preservation. One run does both; ``--steps`` counts both stages,
the first ``--stage1-steps`` are stage 1. The stage is part of every checkpoint, and a checkpoint
is written at the stage boundary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dreamdist.artifact import Artifact
from dreamdist.backbones import Backbone
from dreamdist.config import help_
from dreamdist.data import ReferenceSet
from dreamdist.methods import Conditioning, Method
from dreamdist.methods.finetune import (
    PIPELINE_DIR,
    load_pipeline_weights,
    load_state,
    make_trainable,
    named_trainables,
    save_pipeline,
    state_of,
)
from dreamdist.methods.textual_inversion import EMBEDS_FILE
from dreamdist.methods.tokens import PlaceholderTokens, install_tokens, save_learned_embeds

STAGE2_DEFAULT_STEPS = 400  # not given by the paper; DreamBooth-like fine-tuning length


@dataclass
class TwoStageConfig:
    """Two-stage (Zeng et al. 2024): textual inversion of '<rare> [class noun]', then UNet fine-tuning."""

    class_noun: str = field(
        metadata=help_("the subject's class, e.g. 'backpack' (prompt 'a photo of <rare> backpack')")
    )
    init_word: str | None = field(
        default=None,
        metadata=help_("one-token word initialising the rare token, e.g. 'shiny' (default: the class noun)"),
    )
    token: str = field(default="<rare>", metadata=help_("the new rare adjective token"))
    instance_prompt: str = field(default="a photo of {}", metadata=help_("training prompt; {} -> '<rare> backpack'"))
    stage1_steps: int = field(default=500, metadata=help_("textual-inversion steps; --steps counts both stages"))
    stage1_learning_rate: float = field(
        default=5e-3, metadata=help_("stage 1 learning rate (--learning-rate: stage 2)")
    )

    def __post_init__(self) -> None:
        if not self.class_noun.strip():
            raise ValueError("--class-noun must name the subject's class, e.g. --class-noun backpack")
        if "{}" not in self.instance_prompt:
            raise ValueError(
                f"--instance-prompt must contain {{}} (the '<rare> noun' slot); got {self.instance_prompt!r}"
            )
        if self.stage1_steps < 1 or self.stage1_learning_rate <= 0:
            raise ValueError("--stage1-steps must be >= 1 and --stage1-learning-rate > 0")
        if " " in self.token.strip() or not self.token:
            raise ValueError(f"--token must be one word without spaces, e.g. '<rare>'; got {self.token!r}")

    @property
    def concept(self) -> str:
        return f"{self.token} {self.class_noun}"


class TwoStage(Method):
    """Stage 1 trains the token row (UNet frozen); stage 2 trains the UNet (token and text encoder frozen)."""

    name = "two-stage"
    default_learning_rate = 5e-6  # stage 2 (UNet), as DreamBooth's

    def __init__(self, config: TwoStageConfig):
        self.config = config
        self.default_steps = config.stage1_steps + STAGE2_DEFAULT_STEPS
        self.checkpoint_steps = {config.stage1_steps}
        self.stage = 0
        self.backbone: Backbone | None = None

    def setup(
        self, backbone: Backbone, data: ReferenceSet, generator: torch.Generator, run_dir: Path | None = None
    ) -> None:
        cfg = self.config
        self.backbone = backbone
        self.tokens = PlaceholderTokens(backbone, cfg.token, 1, cfg.init_word or cfg.class_noun)
        make_trainable(backbone.denoiser)
        self.denoiser_params = named_trainables({backbone.denoiser_name: backbone.denoiser})
        self.ids = backbone.tokenize([cfg.instance_prompt.replace("{}", cfg.concept)])  # (1, L)
        self._enter(1)

    def _enter(self, stage: int) -> None:
        """Switch which parameters receive gradients (the optimizer skips those without)."""
        self.tokens.vectors.requires_grad_(stage == 1)
        self.backbone.denoiser.requires_grad_(stage == 2)
        if stage == 2:  # the prompt no longer changes: encode it once
            self.tokens.sync(self.backbone)
            with torch.no_grad():
                self.hidden = self._encode()
        self.stage = stage

    def _encode(self) -> torch.Tensor:
        """(1, L, d) features of the instance prompt (differentiable in the token row)."""
        backbone, ids = self.backbone, self.ids
        return backbone.encode_prompt_embeds(self.tokens.embed(backbone, ids), backbone.eos_positions(ids))[0]

    def begin_step(self, step: int, total_steps: int) -> None:
        """Steps ``[0, stage1_steps)`` are stage 1, the rest stage 2 (also right after a resume)."""
        first = self.config.stage1_steps
        if total_steps <= first:
            raise ValueError(f"--steps ({total_steps}) counts both stages and must exceed --stage1-steps ({first})")
        stage = 1 if step < first else 2
        if stage != self.stage:
            self._enter(stage)

    def param_groups(self, learning_rate: float) -> list[dict]:
        """Stage 1's token row at its own learning rate; the UNet at ``learning_rate``."""
        return [
            {"params": [self.tokens.vectors], "lr": self.config.stage1_learning_rate},
            {"params": list(self.denoiser_params.values()), "lr": learning_rate},
        ]

    def trainable_modules(self) -> list[nn.Module]:
        return [self.tokens, self.backbone.denoiser]

    def condition(
        self, backbone: Backbone, labels: torch.Tensor, generator: torch.Generator, indices: torch.Tensor | None = None
    ) -> Conditioning:
        """labels (B,) -> the instance prompt's features (B, L, d)."""
        hidden = self._encode() if self.stage == 1 else self.hidden
        return Conditioning(hidden=hidden.expand(len(labels), -1, -1), logs={"stage": float(self.stage)})

    def after_step(self) -> None:
        if self.stage == 1:
            self.tokens.sync(self.backbone)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The stage, the token row, and (stage 2 only: before it the UNet is the frozen one) the UNet."""
        tensors = {"stage": torch.tensor([self.stage]), "token_embeds": self.tokens.vectors.detach().float().cpu()}
        if self.stage == 2:
            tensors.update(state_of(self.denoiser_params))
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.tokens.vectors.copy_(tensors["token_embeds"])
        self.tokens.sync(self.backbone)
        if int(tensors["stage"]) == 2:
            load_state(self.denoiser_params, tensors)
            self._enter(2)

    def artifact(self, backbone: Backbone) -> tuple[dict[str, torch.Tensor], dict]:
        """The token row here; the fine-tuned UNet in ``pipeline/``."""
        cfg = self.config
        meta = {
            "method_config": asdict(cfg),
            "concept": cfg.concept,
            "token_names": {cfg.token: self.tokens.names},
            "pipeline": PIPELINE_DIR,
            "trained": [backbone.denoiser_name],
        }
        return {"token_embeds": self.tokens.vectors.detach().float().cpu()}, meta

    def export(self, backbone: Backbone, folder: Path) -> dict:
        """A pipeline folder (tokenizer with the token, fine-tuned UNet) and ``learned_embeds.safetensors``."""
        save_pipeline(backbone, folder)
        save_learned_embeds(folder / EMBEDS_FILE, self.config.token, self.tokens.vectors, backbone)
        return {"diffusers": {"pipeline": PIPELINE_DIR, "textual_inversion": EMBEDS_FILE, "token": self.config.token}}


def prepare(backbone: Backbone, artifacts: list[Artifact]) -> None:
    """Add the learned token, then load the fine-tuned UNet from the run's pipeline folder."""
    for artifact in artifacts:
        install_tokens(backbone, artifact.meta["method_config"]["token"], artifact.tensors["token_embeds"])
        load_pipeline_weights(backbone, artifact.path.parent, artifact.meta["trained"])
