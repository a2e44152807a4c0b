"""The studio's request bodies as pydantic models: every number bounded, every string capped.

The page sends form values as strings ("" for a field left empty); ``Blank`` turns "" into None
before validation, and lax mode turns "12" into 12. Anything else out of range is a 400 that
names the field.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from dreamdist.config import SAMPLERS
from dreamdist.pipeline import SCHEDULERS
from dreamdist.studio.runs import check_name

MAX_TEXT = 1000
MAX_IMAGES = 64
MAX_MIX = 8
MAX_INFERENCE_STEPS = 200
MAX_TOY_REFERENCES = 200


def _blank(value):
    return None if isinstance(value, str) and not value.strip() else value


def _option(value):
    """A method option: a short string, a bool, or a finite number of sane size."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > 1e9:
            raise ValueError("must be a finite number below 1e9 in size")
        return value
    if isinstance(value, str) and len(value) <= MAX_TEXT:
        return value
    raise ValueError(f"must be a number, a boolean or a string of at most {MAX_TEXT} characters")


Blank = BeforeValidator(_blank)
Name = Annotated[str, Field(max_length=64), AfterValidator(check_name)]
Text = Annotated[Annotated[str, Field(max_length=MAX_TEXT)] | None, Blank]
SamplerName = Literal[SAMPLERS]
SchedulerName = Literal[tuple(SCHEDULERS)]
OptionValue = Annotated[str | bool | int | float | None, AfterValidator(_option)]


def bounded(kind: type, low: float, high: float):
    """An optional form number in [low, high] ("" = not given)."""
    if kind is float:
        return Annotated[Annotated[float, Field(ge=low, le=high, allow_inf_nan=False)] | None, Blank]
    return Annotated[Annotated[int, Field(ge=low, le=high)] | None, Blank]


class Form(BaseModel):
    """Unknown fields are refused (a typo must not be ignored silently)."""

    model_config = ConfigDict(extra="forbid")


class TrainRequest(Form):
    """The train form: references (one of folder, upload, toy concept), method and its options, schedule."""

    name: Annotated[Name | None, Blank] = None
    method: Annotated[Annotated[str, Field(max_length=64)] | None, Blank] = None
    images: Annotated[Annotated[str, Field(max_length=4096)] | None, Blank] = None
    upload: Annotated[Name | None, Blank] = None
    toy_concept: Annotated[Annotated[str, Field(max_length=64)] | None, Blank] = None
    toy_references: bounded(int, 1, MAX_TOY_REFERENCES) = None
    num_prompts: bounded(int, 1, 256) = None
    options: Annotated[dict[Annotated[str, Field(max_length=64)], OptionValue], Field(max_length=64)] = {}
    steps: bounded(int, 1, 1_000_000) = None
    learning_rate: bounded(float, 1e-9, 10.0) = None
    batch_size: bounded(int, 1, 1024) = None
    seed: bounded(int, 0, 2**32 - 1) = None
    sample_every: bounded(int, 0, 1_000_000) = None
    checkpoint_every: bounded(int, 0, 1_000_000) = None
    resolution: bounded(int, 8, 4096) = None


class GenerateRequest(Form):
    """The explore form: runs (weighted when several), sampler settings, text edits, seed."""

    runs: Annotated[list[Name], Field(max_length=MAX_MIX)]  # empty: the explorer says what to do
    weights: Annotated[
        list[Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]] | None, Field(max_length=MAX_MIX)
    ] = None
    gamma: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 1.0
    sampler: SamplerName = "mixture"
    prefix: Text = None
    suffix: Text = None
    prompt: Text = None
    seed: bounded(int, 0, 2**32 - 1) = None
    num_images: bounded(int, 1, MAX_IMAGES) = None
    num_inference_steps: bounded(int, 1, MAX_INFERENCE_STEPS) = None
    guidance_scale: bounded(float, 0.0, 50.0) = None
    scheduler: Annotated[SchedulerName | None, Blank] = None


class CompareRequest(Form):
    """The compare form: runs and the sampler settings every run is scored with."""

    runs: Annotated[list[Name], Field(max_length=16)]
    gamma: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 1.0
    sampler: SamplerName = "mixture"
    seed: bounded(int, 0, 2**32 - 1) = None
    num_images: bounded(int, 1, MAX_IMAGES) = None
    num_inference_steps: bounded(int, 1, MAX_INFERENCE_STEPS) = None
