"""The job spec: what a user asks for (DESIGN.md, "Job spec"), validated completely.

Torch-free: the API validates submissions with it, the search and the
workers read it. Unknown fields are errors, so a typo never passes silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.catalog import (
    ARCHITECTURES,
    DATASETS,
    PLUGIN_ARGUMENTS,
    PLUGIN_FAMILY,
    architecture_info,
    plugin_architectures,
    plugin_argument_problem,
)
from core.errors import InvalidSpecError
from core.spec_fidelity import FidelitySpec, fidelity_problem

# The latency section lives in core.spec_latency; importable from here.
from core.spec_latency import CPU_ROUND_TO as CPU_ROUND_TO
from core.spec_latency import CUDA_ROUND_TO as CUDA_ROUND_TO
from core.spec_latency import INT8_ROUND_TO as INT8_ROUND_TO
from core.spec_latency import LatencyRuntime as LatencyRuntime
from core.spec_latency import LatencySpec as LatencySpec
from core.spec_latency import default_round_to as default_round_to

# The objective's models live in core.spec_objective; Constraints importable from here.
from core.spec_objective import Constraints as Constraints
from core.spec_objective import ObjectiveSpec

MAX_TRIALS = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """The network to prune.

    ``weights`` is the id of an upload (``POST /v1/weights``); null trains a
    baseline first. ``num_classes`` defaults to the dataset's.
    """

    arch: str = Field(description="architecture name from GET /v1/architectures")
    num_classes: int | None = Field(default=None, ge=2, le=100_000)
    arguments: dict[str, Any] = Field(default_factory=dict,
                                      description="extra builder arguments, e.g. small_input")
    weights: str | None = Field(default=None, max_length=64)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, value: str) -> str:
        if architecture_info(value) is None:
            known = [*ARCHITECTURES, *plugin_architectures()]
            raise ValueError(f"unknown architecture {value!r}; see GET /v1/architectures "
                             f"(known: {', '.join(known)})")
        return value

    @model_validator(mode="after")
    def _known_arguments(self) -> ModelSpec:
        info = architecture_info(self.arch)
        if info is None:
            return self
        if info.family == PLUGIN_FAMILY:
            # A plugin's builder checks its own arguments, in the worker; here only that
            # they are few plain values.
            if len(self.arguments) > PLUGIN_ARGUMENTS:
                raise ValueError(f"a plugin takes at most {PLUGIN_ARGUMENTS} arguments")
            problems = {name: problem for name, value in self.arguments.items()
                        if (problem := plugin_argument_problem(value))}
        else:
            allowed = sorted(info.argument_rules)
            unknown = set(self.arguments) - set(allowed)
            if unknown:
                raise ValueError(f"{self.arch} takes arguments {allowed}, "
                                 f"not {sorted(unknown)[:10]}")
            problems = {name: problem for name, value in self.arguments.items()
                        if (problem := info.argument_rules[name].problem(value))}
        if problems:
            raise ValueError("; ".join(f"arguments.{name[:100]} {problem}"
                                       for name, problem in sorted(problems.items())))
        return self


class PreprocessingSpec(_Strict):
    """How images become network inputs. A field left null takes the dataset's preset
    (``GET /v1/datasets`` lists them); the pruned checkpoint records what was used."""

    normalization: Literal["cifar", "imagenet", "mnist", "fashion_mnist", "centered",
                           "custom"] | None = Field(
        default=None, description="named mean/std statistics, or custom (give mean and std)")
    mean: list[float] | None = Field(default=None, min_length=1, max_length=3,
                                     description="per channel, of pixels scaled to [0, 1]")
    std: list[float] | None = Field(default=None, min_length=1, max_length=3)
    augmentation: Literal["pad_crop", "random_resized_crop", "none"] | None = Field(
        default=None, description="training augmentation: crop of a zero-padded image, "
                                  "RandomResizedCrop, or none")
    flip: bool | None = Field(default=None, description="random horizontal flip in training")
    padding: int | None = Field(default=None, ge=1, le=64,
                                description="pad_crop padding; default image_size / 8")
    resize: int | None = Field(
        default=None, ge=8, le=4096,
        description="ImageFolder evaluation: shorter side resized to this, then a centre crop "
                    "of image_size; default image_size / 0.875")
    channels: Literal[1, 3] | None = Field(
        default=None, description="grayscale data: 1 keeps one channel (the architecture "
                                  "needs in_channels: 1), 3 (the default) repeats it")

    @model_validator(mode="after")
    def _statistics(self) -> PreprocessingSpec:
        given = self.mean is not None or self.std is not None
        if self.normalization == "custom" or given:
            if self.normalization not in (None, "custom"):
                raise ValueError("mean and std go with normalization: custom (or none named)")
            if self.mean is None or self.std is None or len(self.mean) != len(self.std):
                raise ValueError("custom normalization needs mean and std of the same length "
                                 "(1 value, or 1 per channel)")
            if any(value <= 0 for value in self.std):
                raise ValueError("every std must be > 0")
        return self


class DatasetSpec(_Strict):
    name: str = Field(description="digits | mnist | fashion_mnist | cifar10 | cifar100 | "
                                  "imagefolder")
    image_size: int | None = Field(default=None, ge=8, le=1024)
    root: str | None = Field(default=None, max_length=1024,
                             description="folder relative to TOPIARY_DATA_ROOT")
    preprocessing: PreprocessingSpec = Field(default_factory=PreprocessingSpec)
    loader_workers: int | None = Field(
        default=None, ge=0, le=64,
        description="data-loading worker processes for image files; default from the cores "
                    "a worker has per device")

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(f"unknown dataset {value!r}; known: {', '.join(DATASETS)}")
        return value

    @model_validator(mode="after")
    def _root_when_needed(self) -> DatasetSpec:
        info = DATASETS[self.name]
        if info.needs_root and not self.root:
            raise ValueError(f"dataset {self.name!r} needs 'root', a folder under the "
                             "server's data root")
        if self.preprocessing.channels == 1 and info.channels != 1:
            raise ValueError(f"preprocessing.channels 1 is for grayscale data; {self.name!r} "
                             "is RGB")
        if self.preprocessing.resize is not None and info.native_size is not None:
            raise ValueError(f"preprocessing.resize is for imagefolder; {self.name!r} images "
                             "are resized to image_size whole")
        return self

    def input_channels(self) -> int:
        """Channels the network takes: 3 unless grayscale data keeps its one channel."""
        return self.preprocessing.channels or 3


WarmStartMethod = Literal["attention", "pls", "magnitude"]

def _default_warm_start() -> list[WarmStartMethod]:
    return ["attention", "pls"]


class SearchSpec(_Strict):
    sampler: Literal["tpe", "gp", "nsga2", "random"] = "tpe"
    n_trials: int = Field(default=40, ge=1, le=MAX_TRIALS)
    timeout_minutes: float | None = Field(default=None, gt=0, le=60 * 24 * 30)
    space: Literal["per_layer", "per_stage"] = "per_layer"
    allow_block_removal: bool = True
    min_keep_ratio: float = Field(default=0.1, gt=0, le=1,
                                  description="no group keeps fewer channels than this share")
    round_to: int | None = Field(
        default=None, ge=1, le=256,
        description="every pruned width is a multiple of this (or the full width); null: "
                    "by runtime and device, 8 on CUDA and TensorRT (int8: 32), the "
                    "measured best on the CPU")
    warm_start: list[WarmStartMethod] = Field(default_factory=_default_warm_start, max_length=3)
    channel_importance: WarmStartMethod = Field(
        default="magnitude",
        description="which channels a pruned layer loses: L1 magnitude, or one of the scorers")
    trial_pruner: Literal["none", "median", "hyperband"] = "none"
    fidelity: FidelitySpec = Field(default_factory=FidelitySpec)


#: ``fine_tune.learning_rate`` is quoted for this batch size (see ``scale_learning_rate``).
REFERENCE_BATCH_SIZE = 64


class FineTuneSpec(_Strict):
    trial_epochs: int = Field(default=2, ge=0, le=100)
    trial_steps: int | None = Field(
        default=None, ge=1, le=10_000_000,
        description="optimiser steps per trial, instead of trial_epochs (large datasets)")
    trial_eval_images: int | None = Field(
        default=10_000, ge=1, le=10_000_000,
        description="a trial is scored on at most this many validation images, the same "
                    "ones for every trial; null scores on the whole validation split")
    final_epochs: int = Field(default=15, ge=0, le=1000)
    baseline_epochs: int = Field(default=15, ge=1, le=1000,
                                 description="epochs to train a baseline when weights is null")
    distill: bool = True
    optimizer: Literal["sgd", "adamw"] = Field(
        default="sgd", description="SGD with Nesterov momentum 0.9, or AdamW")
    learning_rate: float = Field(default=0.01, gt=0, le=10)
    scale_learning_rate: bool = Field(
        default=True, description=f"learning_rate is for batch {REFERENCE_BATCH_SIZE} and "
                                  "scales linearly with batch_size")
    warmup_epochs: float = Field(default=0.0, ge=0, le=100, description=(
        "linear learning-rate warm-up before the cosine decay (at most half a run)"))
    weight_decay: float = Field(default=5e-4, ge=0, le=1)
    decay_norm_and_bias: bool = Field(
        default=False, description="also decay norm-layer weights and biases")
    batch_size: int = Field(default=64, ge=1, le=4096)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    channels_last: bool = Field(default=True, description=(
        "channels_last memory format on a CUDA worker (ignored on CPU)"))
    amp: bool = Field(default=True, description=(
        "mixed precision for every training run on a CUDA worker (ignored on CPU): bfloat16 "
        "autocast where the GPU supports it, else float16 with gradient scaling; small "
        "networks on small images train faster without it"))

    @model_validator(mode="after")
    def _one_trial_budget(self) -> FineTuneSpec:
        if self.trial_steps is None:
            return self
        if "trial_epochs" in self.model_fields_set and self.trial_epochs != 0:
            raise ValueError("give trial_steps or trial_epochs, not both")
        # With steps a trial trains no whole epochs (``trial_budget``): 0 says so in the
        # stored spec, which a worker validates again (a dump with the default 2 beside
        # trial_steps would read as both).
        self.trial_epochs = 0
        return self

    def trial_budget(self) -> dict[str, int]:
        """A trial's fine-tune length as ``models.train.fine_tune`` arguments:
        ``{"epochs": n}``, or ``{"epochs": 0, "steps": n}`` with ``trial_steps``."""
        if self.trial_steps is not None:
            return {"epochs": 0, "steps": self.trial_steps}
        return {"epochs": self.trial_epochs}

    def training_settings(self) -> dict[str, Any]:
        """What the baseline, the trials and the final fine-tune share, as
        ``models.train.TrainConfig`` fields (``amp=None``: on exactly on CUDA)."""
        return {"learning_rate": self.learning_rate, "batch_size": self.batch_size,
                "label_smoothing": self.label_smoothing, "amp": None if self.amp else False,
                "optimizer": self.optimizer, "weight_decay": self.weight_decay,
                "decay_norm_and_bias": self.decay_norm_and_bias,
                "warmup_epochs": self.warmup_epochs,
                "reference_batch_size": REFERENCE_BATCH_SIZE if self.scale_learning_rate
                else None,
                "channels_last": None if self.channels_last else False}


class JobSpec(_Strict):
    """A whole pruning job, as submitted."""

    name: str = Field(min_length=1, max_length=200)
    model: ModelSpec
    dataset: DatasetSpec
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    latency: LatencySpec = Field(default_factory=LatencySpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    fine_tune: FineTuneSpec = Field(default_factory=FineTuneSpec)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _fidelity_fits(self) -> JobSpec:
        problem = fidelity_problem(self.objective.mode, self.search.trial_pruner,
                                   self.fine_tune.trial_budget(), self.search.fidelity)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _channels_agree(self) -> JobSpec:
        in_channels = self.model.arguments.get("in_channels", 3)
        wanted = self.dataset.input_channels()
        if in_channels != wanted:
            raise ValueError(
                f"model.arguments.in_channels is {in_channels} but the data gives {wanted} "
                "channel(s): set dataset.preprocessing.channels and in_channels alike "
                "(1 keeps grayscale data at one channel)")
        return self

    def num_classes(self) -> int:
        """The classifier size: the model's, else the dataset's fixed count."""
        if self.model.num_classes is not None:
            return self.model.num_classes
        fixed = DATASETS[self.dataset.name].num_classes
        if fixed is None:
            raise InvalidSpecError("model.num_classes is required for an imagefolder dataset")
        return fixed

    def image_size(self) -> int:
        return self.dataset.image_size or DATASETS[self.dataset.name].default_image_size

    def channel_multiple(self, device_type: str = "cpu") -> int:
        """``search.round_to``, else its default for the runtime on ``device_type`` (the
        worker's, which ``latency.device`` auto leaves open until a worker claims the job)."""
        return self.search.round_to or default_round_to(self.latency, device_type)


def resolve_data_root(root: str, data_root: str | Path) -> Path:
    """Resolve a spec's dataset root inside the server's data root.

    Raises:
        InvalidSpecError: the path is absolute elsewhere or escapes the data root
            (``..``, symlinks out).
    """
    base = Path(data_root).resolve()
    candidate = Path(root)
    resolved = (candidate if candidate.is_absolute() else base / candidate).resolve()
    if resolved != base and base not in resolved.parents:
        raise InvalidSpecError(f"dataset root {root!r} is outside the server's data root; "
                               "give a folder relative to TOPIARY_DATA_ROOT")
    return resolved
