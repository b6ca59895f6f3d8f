"""The shared Hugging Face video-LLM adapter: model parts, prompts, forwards.

Family modules (LLaVA-OneVision, Qwen2-VL, LLaVA-NeXT-Video) only say how pixels,
the video placeholder block and positions are built; the procedures (prefill,
decode, prefix reuse) are in :mod:`tokenred.adapters._inference` and the reduction
engine in :mod:`tokenred.insertion`. transformers is imported inside functions, so
listing or registering adapters stays cheap.

Prefill feeds ``inputs_embeds`` (text embeddings with the visual rows written in)
and explicit ``position_ids`` to the model's own ``forward``; decoding is a greedy
loop over ``forward`` with a ``DynamicCache``, so positions after a reduction are
under tokenred's control rather than ``generate``'s bookkeeping.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from tokenred.adapter import ModelAdapter
from tokenred.adapters._common import ChatTemplate, check_checkpoint_dir, check_frames
from tokenred.adapters._inference import (
    greedy_decode,
    prefill_from_prefix,
    run_prefill,
)
from tokenred.adapters._runtime import (
    load_checkpoint,
    resolve_attn,
    resolve_device,
    stop_ids,
    weights_fingerprint,
)
from tokenred.arch import ArchSpec, VisionSpec
from tokenred.errors import ModelLoadError, TokenredError, UsageError
from tokenred.insertion import (
    LayerReduction,
    Layout,
    scrub_position_ids,
)
from tokenred.model_io import Generation, PrefillResult, PrefixCache, VideoFeatures

if TYPE_CHECKING:
    from tokenred.plan import ReductionPlan

log = logging.getLogger(__name__)


class HFVideoAdapter(ModelAdapter):
    """Base class of the Hugging Face video-LLM adapters."""

    model_class: ClassVar[str] = ""
    """transformers class name, e.g. ``LlavaOnevisionForConditionalGeneration``."""
    chat: ClassVar[ChatTemplate]
    allow_random_init: ClassVar[bool] = False
    """Whether a checkpoint without weights gets a seeded random init (tiny)."""

    def __init__(self, config: Any = None) -> None:
        """Store the config; nothing is loaded yet."""
        super().__init__(config)
        self._model: Any = None
        self._tokenizer: Any = None
        self._path: Path | None = None
        self._random_weights = False
        self._weights_id: str | None = None
        self._device = torch.device("cpu")
        self._attn = self.config.attn_implementation
        self._eos: set[int] = set()

    # ----------------------------------------------------------------- family parts
    @abstractmethod
    def _pixels(
        self, frames: np.ndarray, timestamps: Sequence[float] | None
    ) -> dict[str, Tensor]:
        """Return the vision-tower inputs for ``[T, H, W, 3]`` uint8 frames."""

    @abstractmethod
    def _features(self, pixels: dict[str, Tensor]) -> VideoFeatures:
        """Run the vision tower + projector (under inference mode)."""

    @abstractmethod
    def _video_block(self, video: VideoFeatures) -> tuple[list[int], int]:
        """Return the placeholder ids of the video block and its first visual row."""

    @abstractmethod
    def _vision_spec(self) -> VisionSpec:
        """Describe the vision tower for the FLOPs model."""

    def _positions(self, ids: list[int], video: VideoFeatures) -> Tensor:
        """Return ``[A, L]`` positions of the unreduced sequence (1-D: arange)."""
        return torch.arange(len(ids), device=self._device).unsqueeze(0)

    def _fill_extra(self, embeds: Tensor, vis_start: int, video: VideoFeatures) -> None:
        """Write non-reducible visual rows (e.g. a newline) into ``embeds``."""

    def _rope_ids(self, positions: Tensor) -> Tensor:
        """Convert ``[A, L]`` positions to the model's ``position_ids`` layout."""
        # 1-D: [1, L] is already [B=1, L]; M-RoPE: [3, L] -> [3, B=1, L]
        return positions if self.rope == "1d" else positions.unsqueeze(1)

    # ---------------------------------------------------------------------- loading
    def _checkpoint_path(self) -> Path:
        if self.config.path is None:
            msg = (
                f"model '{self.name}' needs a checkpoint: set model.path=DIR or pass "
                "--model DIR (a save_pretrained directory) or --model ORG/NAME (a "
                "Hugging Face id in the local cache)"
            )
            raise ModelLoadError(msg)
        from tokenred.checkpoints import resolve_checkpoint

        # model.path may also be a Hugging Face repo id (the cached snapshot).
        return resolve_checkpoint(self.config.path)

    def weights_identity(self) -> str | None:
        """Fingerprint of the checkpoint's weights (see ``weights_fingerprint``).

        Computed once per adapter: run ids, manifests and every feature-cache key
        ask for it, and it costs file reads.
        """
        if self._weights_id is None:
            try:
                path = self._checkpoint_path()
            except ModelLoadError:
                return None
            if path.is_dir():
                self._weights_id = weights_fingerprint(path, self.config.seed)
        return self._weights_id

    def load(self) -> None:
        """Load weights and tokenizer from the checkpoint directory."""
        path = check_checkpoint_dir(
            self._checkpoint_path(), weights=not self.allow_random_init
        )
        from tokenred.checkpoints import read_config, reject_original_llava

        reject_original_llava(path, read_config(path))
        self._device = resolve_device(self.config.device)
        dtype = self.config.dtype.torch
        self._attn = resolve_attn(self.config.attn_implementation, self._device, dtype)
        model, self._tokenizer, self._random_weights = load_checkpoint(
            self.model_class,
            path,
            dtype=dtype,
            attn=self._attn,
            seed=self.config.seed,
            label=self.name,
            device_map=self.config.device_map if torch.cuda.is_available() else None,
        )
        from tokenred.measure.latency import time_across

        time_across([])
        if self.config.device_map:
            # Accelerate's hooks move activations between devices; inputs, positions
            # and the KV cache start where the embeddings live.
            from tokenred.adapters._sharding import shard

            self._model, self._device = shard(
                model, self.config.device_map, self.name, str(self._device)
            )
            self._model.eval()
            from tokenred.adapters._sharding import model_devices

            time_across(model_devices(self._model))
        else:
            self._model = model.to(self._device).eval()
        self._path = path
        self._eos = stop_ids(self._tokenizer, self._model)

    @property
    def device(self) -> torch.device:
        """Device of the loaded model."""
        return self._device

    @property
    def stop_ids(self) -> set[int]:
        """Token ids that end an answer."""
        return self._eos

    def detokenize(self, ids: Sequence[int]) -> str:
        """Decode generated ids to text without special tokens."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True)).strip()

    def num_layers(self) -> int | None:
        """Return the LLM's layer count from the checkpoint's ``config.json``."""
        if self._model is not None:
            return int(self.text_config.num_hidden_layers)
        from tokenred.checkpoints import read_config

        try:
            path = self._checkpoint_path()
            if not path.is_dir():
                return None
            data = read_config(path)
        except TokenredError:
            return None
        text = data.get("text_config") or data
        layers = text.get("num_hidden_layers") if isinstance(text, dict) else None
        return int(layers) if layers else None

    def _require_loaded(self) -> Any:
        if self._model is None:
            msg = f"model '{self.name}' is not loaded; call load() first"
            raise UsageError(msg)
        return self._model

    # ------------------------------------------------- parts for tools and tests
    # The public handles below exist for code that drives the Hugging Face model
    # itself: the demo model's trainer (experiments/demo_model) and the tests that
    # check tokenred's paths against the model's own ``forward``. Everything else
    # goes through encode_video / prefill / decode.
    @property
    def hf_model(self) -> Any:
        """The loaded transformers model (e.g. ``LlavaOnevision...Generation``).

        The adapter's own paths read it as they find it, so training it or calling
        ``save_pretrained`` on it needs no adapter cooperation.
        """
        return self._require_loaded()

    @property
    def tokenizer(self) -> Any:
        """The loaded tokenizer (a transformers tokenizer)."""
        self._require_loaded()
        return self._tokenizer

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens, as prompts are tokenized."""
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        """Return (ids before the video block, ids after it) of the chat prompt.

        ``prompt_ids("")[0]`` is the system prefix that KV-cache reuse shares
        between the questions of a video.
        """
        chat = self.chat
        before = self.tokenize(chat.before_video)
        bos = self._tokenizer.bos_token_id
        if chat.bos and bos is not None:
            before = [int(bos), *before]
        after = self.tokenize(chat.after_video + prompt + chat.after_prompt)
        return before, after

    def vision_inputs(
        self, frames: np.ndarray, timestamps: Sequence[float] | None = None
    ) -> dict[str, Tensor]:
        """Vision-tower inputs (e.g. ``pixel_values_videos``) of ``[T, H, W, 3]`` uint8.

        The model's own preprocessing of the frames, exactly as
        :meth:`encode_video` feeds them to the tower (on the CPU, before the cast
        to the model's device and dtype).
        """
        self._require_loaded()
        return self._pixels(check_frames(frames), timestamps)

    def prompt_layout(
        self, video: VideoFeatures, prompt: str
    ) -> tuple[list[int], Layout]:
        """Token ids of the unreduced prompt around ``video`` and their ``Layout``.

        The ids hold the family's video placeholder block where the visual rows go;
        the layout says where those rows and the question start, and their
        positions (what :meth:`prefill` builds before any reduction).
        """
        self._require_loaded()
        return self._layout(video, *self.prompt_ids(prompt))

    @property
    def text_config(self) -> Any:
        """The LLM's transformers config."""
        return self._require_loaded().config.text_config

    @property
    def layers(self) -> Any:
        """The LLM's decoder layers (``ModuleList``)."""
        return self._require_loaded().model.language_model.layers

    @property
    def head_dim(self) -> int:
        """Attention head width of the LLM."""
        tc = self.text_config
        return int(
            getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        )

    @property
    def arch(self) -> ArchSpec:
        """LLM and vision-tower facts from the checkpoint config."""
        tc = self.text_config
        return ArchSpec(
            family=self.family,
            layers=int(tc.num_hidden_layers),
            hidden_size=int(tc.hidden_size),
            heads=int(tc.num_attention_heads),
            kv_heads=int(tc.num_key_value_heads),
            head_dim=self.head_dim,
            intermediate_size=int(tc.intermediate_size),
            vocab_size=int(tc.vocab_size),
            rope=self.rope,
            vision=self._vision_spec(),
            extra={"model_class": self.model_class},
        )

    def describe(self) -> dict[str, Any]:
        """Manifest entry: name, path, family, dtype, device, attention, weights."""
        info = super().describe()
        info.update(
            path=str(self._path) if self._path else self.config.path,
            device=str(self._device),
            attn_implementation=self._attn,
            random_weights=self._random_weights,
        )
        if self._model is not None and self.config.device_map:
            from tokenred.adapters._sharding import model_devices

            info["device_map"] = self.config.device_map
            info["devices"] = model_devices(self._model)
        if self._model is not None:
            info["parameters"] = int(sum(p.numel() for p in self._model.parameters()))
        return info

    # ----------------------------------------------------------------------- vision
    def encode_video(
        self, frames: np.ndarray, timestamps: Sequence[float] | None = None
    ) -> VideoFeatures:
        """Build pixels from decoded frames and run the vision tower + projector."""
        pixels = self.vision_inputs(frames, timestamps)
        with torch.inference_mode():
            return self._features(pixels)

    # ---------------------------------------------------------------------- prefill
    def _layout(
        self,
        video: VideoFeatures,
        before: list[int],
        after: list[int],
        continuation: Sequence[int] = (),
    ) -> tuple[list[int], Layout]:
        block, offset = self._video_block(video)
        ids = [*before, *block, *after]
        pos = self._positions(ids, video)
        if continuation:
            tail = pos.max() + 1 + torch.arange(len(continuation), device=pos.device)
            pos = torch.cat([pos, tail.expand(pos.shape[0], -1)], dim=1)
            ids = [*ids, *(int(c) for c in continuation)]
        layout = Layout(
            positions=pos,
            vis_start=len(before) + offset,
            n_visual=video.n,
            grid=video.grid,
            query_start=len(before) + len(block),
        )
        return ids, layout

    def _embeds(self, ids: list[int], layout: Layout, video: VideoFeatures) -> Tensor:
        model = self._model
        id_t = torch.tensor([ids], device=self._device)
        embeds: Tensor = model.get_input_embeddings()(id_t)
        vs, n = layout.vis_start, layout.n_visual
        embeds[0, vs : vs + n] = video.features.to(embeds.dtype)
        self._fill_extra(embeds, vs, video)
        return embeds

    def _rotary(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        lm = self._model.model.language_model
        cos, sin = lm.rotary_emb(x, self._rope_ids(positions))
        return cos, sin

    def _forward(
        self,
        cache: Any,
        positions: Tensor,
        *,
        embeds: Tensor | None = None,
        ids: Sequence[int] = (),
        controller: LayerReduction | None = None,
    ) -> Tensor:
        """Run one cached forward; return the last position's ``[V]`` logits."""
        with ExitStack() as stack:
            if controller is not None:
                stack.enter_context(controller.step(positions))
            if self._attn.startswith("flash"):
                for h in scrub_position_ids(self.layers):
                    stack.callback(h.remove)
            inputs: dict[str, Any] = (
                {"inputs_embeds": embeds}
                if embeds is not None
                else {"input_ids": torch.tensor([list(ids)], device=self._device)}
            )
            out = self._model(
                **inputs,
                position_ids=self._rope_ids(positions),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        logits: Tensor = out.logits[0, -1].float()
        return logits

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.text_config)

    def prefill(
        self,
        video: VideoFeatures,
        prompt: str,
        plan: ReductionPlan | None = None,
        *,
        continuation_ids: Sequence[int] = (),
    ) -> PrefillResult:
        """Prefill the chat prompt around ``video``, reducing as ``plan`` says."""
        self._require_loaded()
        before, after = self.prompt_ids(prompt)
        return run_prefill(self, video, before, after, plan, continuation_ids)

    def decode(
        self,
        state: PrefillResult,
        max_new_tokens: int | None = None,
        *,
        return_scores: bool = False,
    ) -> Generation:
        """Greedy decoding from ``state``; its cache is consumed."""
        limit = max_new_tokens or self.config.max_new_tokens
        return greedy_decode(self, state, limit, return_scores=return_scores)

    def prefill_prefix(
        self,
        video: VideoFeatures,
        plan: ReductionPlan | None = None,
        *,
        prompts: Sequence[str] = (),
    ) -> PrefixCache:
        """Prefill system prompt + video (+ the text ``prompts`` share) once, reduced.

        Questions are answered from copies of the returned cache. A FLOPs budget
        (``budget.flops``) is resolved against the longest of ``prompts``, so every
        answer stays within it; with one prompt the reduction is exactly the one
        its full prefill makes.
        """
        self._require_loaded()
        if plan is not None:
            self.check_plan(plan, reuse=True)
        before, _ = self.prompt_ids("")
        afters = [self.prompt_ids(p)[1] for p in prompts]
        shared = _common_prefix(afters)
        # A FLOPs budget is a fraction of each answer's full prefill; the prefix's
        # one reduction serves them all, so it is resolved against the longest
        # prompt, the most restrictive (the incompressible text is the largest
        # share there): every answer lands at or below the budget.
        block = len(self._video_block(video)[0])
        lengths = [len(before) + block + len(a) for a in afters]
        state = run_prefill(
            self,
            video,
            before,
            shared,
            plan,
            cost_length=max(lengths) if lengths else None,
        )
        return PrefixCache(
            prefill=state, video_grid=video.grid, shared_ids=tuple(shared)
        )

    def shared_prompt_ids(self, prompts: Sequence[str]) -> list[int]:
        """Return the tokens after the video that all of ``prompts`` begin with.

        The longest common prefix of their tokenized text after the video (the
        chat markers and the benchmark's instruction, when it precedes the
        question), cut so that every prompt keeps at least one token of its own.
        Token-level, not text-level: each question's tokens are exactly those of
        its full prefill, so an answer from the prefix equals the full prefill's.
        Fewer than two prompts share nothing.
        """
        return _common_prefix([self.prompt_ids(p)[1] for p in prompts])

    def answer(
        self, prefix: PrefixCache, prompt: str, max_new_tokens: int | None = None
    ) -> Generation:
        """Answer ``prompt`` from a copy of ``prefix``'s cache (the prefix is kept)."""
        return self.decode(self.prefill_question(prefix, prompt), max_new_tokens)

    def prefill_question(self, prefix: PrefixCache, prompt: str) -> PrefillResult:
        """Prefill ``prompt`` after a copy of ``prefix``'s cache (decode it next)."""
        self._require_loaded()
        return prefill_from_prefix(self, prefix, prompt)


def _common_prefix(afters: Sequence[list[int]]) -> list[int]:
    """Longest common prefix of token lists, leaving each at least one token.

    Fewer than two lists share nothing (one prompt is its own full prefill).
    """
    if len(afters) < 2:
        return []
    limit = min(len(a) for a in afters) - 1
    n = 0
    while n < limit and all(a[n] == afters[0][n] for a in afters):
        n += 1
    return afters[0][:n]
