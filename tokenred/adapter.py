"""The model-adapter interface: what the runner asks of a video LLM.

A :class:`ModelAdapter` owns everything model-specific: loading a checkpoint, turning
decoded frames into visual tokens, the chat template, positions, the KV cache and the
insertion points where a :class:`~tokenred.TokenReducer` runs. The runner only sees
the plain dataclasses defined here, so FLOPs, latency and accuracy are measured the
same way for every model.

Nothing here imports transformers; the Hugging Face adapters live in
:mod:`tokenred.adapters` and are imported lazily through the plugin registry.
"""

from __future__ import annotations

import enum
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from tokenred.errors import CompatibilityError, ConfigError, ModelLoadError, PluginError
from tokenred.tokens import Need, PositionPolicy, Stage

if TYPE_CHECKING:
    from tokenred.arch import ArchSpec
    from tokenred.model_io import (
        Generation,
        PrefillResult,
        PrefixCache,
        VideoFeatures,
    )
    from tokenred.plan import ReductionPlan
    from tokenred.registry import Registry

log = logging.getLogger(__name__)

__all__ = [
    "AdapterConfig",
    "DType",
    "ModelAdapter",
    "create_adapter",
    "resolve_model_name",
]


class DType(str, enum.Enum):
    """Floating-point precision of the model weights and activations."""

    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"

    @property
    def torch(self) -> torch.dtype:
        """The matching ``torch.dtype``."""
        return {
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[self.value]


@dataclass
class AdapterConfig:
    """Typed config shared by every model adapter."""

    name: str = field(
        default="tiny",
        metadata={
            "help": "registered model name, a checkpoint directory, or a Hugging "
            "Face id (ORG/NAME, from the local Hugging Face cache)"
        },
    )
    path: str | None = field(
        default=None,
        metadata={
            "help": "checkpoint directory (save_pretrained layout) or Hugging Face "
            "id (ORG/NAME, from the local cache)"
        },
    )
    dtype: DType = field(
        default=DType.float32,
        metadata={"help": "weights/activations precision: float32, bfloat16, float16"},
    )
    device: str = field(
        default="cpu",
        metadata={"help": "torch device: cpu, cuda, cuda:1 or auto (cuda if present)"},
    )
    device_map: str | None = field(
        default=None,
        metadata={
            "help": "shard the model over devices with Accelerate: auto, balanced, "
            "sequential, or MODULE=DEVICE pairs joined by commas "
            "(language_model.layers.2=1,...); overrides model.device"
        },
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": "attention kernel: sdpa, eager, flash_attention_2 (if installed) "
            "or auto (flash_attention_2 on CUDA when installed, else sdpa)"
        },
    )
    max_new_tokens: int = field(
        default=8, metadata={"help": "greedy decoding length limit"}
    )
    seed: int = field(
        default=0,
        metadata={"help": "seed of the random init when a checkpoint ships no weights"},
    )

    def __post_init__(self) -> None:
        """Coerce the dtype string and check simple ranges."""
        if not isinstance(self.dtype, DType):
            try:
                self.dtype = DType(str(self.dtype))
            except ValueError:
                choices = ", ".join(d.value for d in DType)
                msg = f"model.dtype: unknown '{self.dtype}'; choose one of {choices}"
                raise ConfigError(msg) from None
        if self.max_new_tokens < 1:
            msg = f"model.max_new_tokens: must be >= 1, got {self.max_new_tokens}"
            raise ConfigError(msg)


class ModelAdapter(ABC):
    """Base class of model adapters.

    Subclasses set the class attributes and implement the abstract methods; the
    first docstring line is what ``tokenred list models`` shows.
    """

    name: ClassVar[str]
    """Registry id."""
    Config: ClassVar[type[AdapterConfig]] = AdapterConfig
    """Typed config dataclass."""
    stages: ClassVar[frozenset[Stage]] = frozenset({Stage.PRE_LLM, Stage.IN_LLM})
    """Insertion stages the adapter supports."""
    rope: ClassVar[str] = "1d"
    """``"1d"`` or ``"mrope"``."""
    family: ClassVar[str] = ""
    """Architecture family, e.g. ``"llava_onevision"``."""
    model_types: ClassVar[tuple[str, ...]] = ()
    """``config.json`` ``model_type`` values this adapter loads (``--model PATH``)."""
    default_stage: ClassVar[Stage] = Stage.IN_LLM
    """Insertion stage when ``insertion.stage`` is unset: inside the LLM, where
    the reference methods (STTM, FastV, DyCoke) run."""
    default_layer: ClassVar[int] = 2
    """Decoder layer K when ``insertion.layer`` is unset: K=2, STTM's and FastV's
    setting on the 28-layer Qwen2 LLMs of LLaVA-Video and Qwen2-VL."""
    default_positions: ClassVar[PositionPolicy] = PositionPolicy.SURVIVE
    """Position policy when ``insertion.positions`` is unset, applied equally to
    every reducer (a reducer's ``position_policy`` is only its preference)."""
    checkpoints: ClassVar[tuple[str, ...]] = ()
    """Hugging Face ids of checkpoints it loads (``--model ORG/NAME``), for docs and
    ``tokenred list models``."""

    def __init__(self, config: AdapterConfig | None = None) -> None:
        """Store the config; loading weights waits for :meth:`load`."""
        self.config = config if config is not None else self.Config(name=self.name)

    @classmethod
    def description(cls) -> str:
        """Return the first line of the class docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""

    @abstractmethod
    def load(self) -> None:
        """Load weights and tokenizer.

        Raises:
            ModelLoadError: If the checkpoint directory is missing or incomplete.
        """

    def num_layers(self) -> int | None:
        """Return the LLM's decoder-layer count without loading weights, if known.

        Preflight uses it to reject an unreachable ``budget.flops`` before a run.
        """
        return None

    @property
    @abstractmethod
    def arch(self) -> ArchSpec:
        """Architecture facts for the FLOPs model (after :meth:`load`)."""

    def provides(self, stage: Stage | None = None) -> frozenset[Need]:
        """Return the reducer needs this adapter can satisfy at ``stage``.

        Attention rows and keys come from layer K-1, so only ``IN_LLM`` has them.
        """
        if stage is Stage.PRE_LLM:
            return frozenset({Need.QUERY})
        return frozenset({Need.ATTENTION, Need.QUERY, Need.KEYS})

    def check_plan(self, plan: ReductionPlan, *, reuse: bool = False) -> None:
        """Fail early, with one clear line, on an impossible combination.

        Raises:
            CompatibilityError: Naming the reducer, the stage and the fix.
        """
        reducer = plan.reducer
        if plan.stage not in self.stages or plan.stage not in reducer.stages:
            msg = (
                f"reducer '{plan.label}' (stages {_values(reducer.stages)}) and model "
                f"'{self.name}' (stages {_values(self.stages)}) cannot run at "
                f"insertion.stage={plan.stage.value}; pick a stage both support"
            )
            if Stage.IN_LLM in reducer.stages and Stage.IN_LLM in self.stages:
                msg += ", e.g. insertion.stage=in_llm insertion.layer=2"
            raise CompatibilityError(msg)
        missing = set(reducer.needs) - set(self.provides(plan.stage))
        if missing:
            what = ", ".join(sorted(n.value for n in missing))
            msg = (
                f"reducer '{plan.label}' needs {what}, which model '{self.name}' "
                f"cannot provide at stage {plan.stage.value}; use insertion.stage="
                "in_llm with insertion.layer>=1"
            )
            raise CompatibilityError(msg)
        if reuse and (not reducer.query_agnostic or Need.QUERY in reducer.needs):
            msg = (
                f"reducer '{plan.label}' is query-dependent (query_agnostic=False or "
                "needs the query), so a video prefix cache cannot be shared across "
                "questions; run it without KV-cache reuse"
            )
            raise CompatibilityError(msg)

    @abstractmethod
    def encode_video(
        self, frames: np.ndarray, timestamps: Sequence[float] | None = None
    ) -> VideoFeatures:
        """Run the vision tower and projector on ``[T, H, W, 3]`` uint8 RGB frames."""

    @abstractmethod
    def prefill(
        self,
        video: VideoFeatures,
        prompt: str,
        plan: ReductionPlan | None = None,
        *,
        continuation_ids: Sequence[int] = (),
    ) -> PrefillResult:
        """Prefill the chat prompt around ``video``, reducing as ``plan`` says.

        Args:
            video: Visual tokens from :meth:`encode_video`.
            prompt: The user text, without the video placeholder.
            plan: The reduction; None runs the unmodified model.
            continuation_ids: Tokens appended after the prompt with the positions
                decoding would give them (no-cache recompute, answer scoring).
        """

    @abstractmethod
    def decode(
        self,
        state: PrefillResult,
        max_new_tokens: int | None = None,
        *,
        return_scores: bool = False,
    ) -> Generation:
        """Greedily decode from a prefill state (consumes its cache)."""

    def generate(
        self,
        video: VideoFeatures,
        prompt: str,
        plan: ReductionPlan | None = None,
        max_new_tokens: int | None = None,
    ) -> Generation:
        """Prefill, then decode greedily."""
        return self.decode(self.prefill(video, prompt, plan), max_new_tokens)

    @abstractmethod
    def prefill_prefix(
        self,
        video: VideoFeatures,
        plan: ReductionPlan | None = None,
        *,
        prompts: Sequence[str] = (),
    ) -> PrefixCache:
        """Prefill the shared prefix (system prompt + video) once, reduced.

        Args:
            video: The video's features.
            plan: The reduction, or None for none.
            prompts: The questions the prefix will answer. With two or more, the
                prefix also covers the prompt tokens they all begin with (the
                benchmark's instruction, which comes before the question), as a
                server with prefix caching shares the longest common prefix; each
                answer then prefills only its own tokens. Every question keeps at
                least one token of its own, so it has logits to decode from.

        Raises:
            CompatibilityError: If the reducer is query-dependent.
        """

    @abstractmethod
    def answer(
        self, prefix: PrefixCache, prompt: str, max_new_tokens: int | None = None
    ) -> Generation:
        """Answer one question from a copy of a prefix cache."""

    def prefill_question(self, prefix: PrefixCache, prompt: str) -> PrefillResult:
        """Prefill one question after a copy of a prefix cache; decode it next.

        :meth:`answer` is this followed by :meth:`decode`; KV-reuse measurement
        calls the two separately to time question prefill and decoding apart.

        Raises:
            CompatibilityError: The adapter answers from a prefix only as a whole.
        """
        msg = (
            f"model '{self.name}' does not expose prefill_question; run it without "
            "measure.kv_reuse"
        )
        raise CompatibilityError(msg)

    def weights_identity(self) -> str | None:
        """Return a short fingerprint of the weights this adapter loads, if known.

        Run ids and feature-cache keys include it, so results of one set of weights
        are never reused for another at the same path (e.g. after retraining).
        """
        return None

    def describe(self) -> dict[str, Any]:
        """Return what the run manifest records about the model."""
        return {
            "name": self.name,
            "family": self.family,
            "path": self.config.path,
            "dtype": self.config.dtype.value,
            "device": self.config.device,
            "attn_implementation": self.config.attn_implementation,
            "rope": self.rope,
            "random_weights": False,
            "weights_fingerprint": self.weights_identity(),
        }


def _values(stages: frozenset[Stage]) -> list[str]:
    return sorted(s.value for s in stages)


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or name.startswith(".") or Path(name).exists()


def resolve_model_name(models: Registry[Any], name: str) -> tuple[str, str | None]:
    """Map ``--model`` to a registered adapter name and an optional checkpoint path.

    A registered name (or alias) maps to itself. A directory path, or a Hugging Face
    repo id (``org/name``, found in the local Hugging Face cache), maps to the
    adapter whose ``model_types`` contains its ``config.json`` ``model_type``.

    Returns:
        ``(registered_name, path_or_None)``; a repo id yields its snapshot path.

    Raises:
        ModelLoadError: For a path without a readable ``config.json``, a repo id
            that is not cached (offline), an original-format LLaVA checkpoint
            (with the ``tokenred convert`` command) or an unsupported
            ``model_type``.
    """
    from tokenred.checkpoints import (
        is_repo_id,
        read_config,
        reject_original_llava,
        resolve_checkpoint,
    )

    if name in models or not (_looks_like_path(name) or is_repo_id(name)):
        return models.entry(name).name, None
    path = resolve_checkpoint(name)
    config_file = path / "config.json"
    if not config_file.is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        msg = (
            f"model checkpoint '{path}' {what}; pass a directory written by "
            "save_pretrained (config.json, *.safetensors, tokenizer files), e.g. "
            "huggingface-cli download ORG/NAME --local-dir DIR"
        )
        raise ModelLoadError(msg)
    config = read_config(path)
    reject_original_llava(path, config)
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        msg = f"model checkpoint '{path}': no model_type in config.json"
        raise ModelLoadError(msg)
    supported: list[str] = []
    for entry in models:
        try:
            cls = entry.load()
        except PluginError:
            continue  # a broken third-party adapter must not hide the others
        types = getattr(cls, "model_types", ())
        supported.extend(types)
        if model_type in types:
            return entry.name, str(path)
    msg = (
        f"model checkpoint '{path}' has model_type '{model_type}', which no adapter "
        f"loads; supported: {', '.join(sorted(set(supported)))}"
    )
    raise ModelLoadError(msg)


def create_adapter(models: Registry[Any], config: AdapterConfig) -> ModelAdapter:
    """Instantiate the adapter for ``config.name`` (a registered name or a path).

    The config is converted to the adapter's own ``Config`` class, keeping every
    field the two share, so ``--model PATH`` works with a plain
    :class:`AdapterConfig`.
    """
    name, path = resolve_model_name(models, config.name)
    cls: type[ModelAdapter] = models.get(name)
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    wanted = {f.name for f in fields(cls.Config)}
    kwargs = {k: v for k, v in values.items() if k in wanted}
    kwargs["name"] = name
    if path is not None:
        kwargs["path"] = path
    return cls(cls.Config(**kwargs))
