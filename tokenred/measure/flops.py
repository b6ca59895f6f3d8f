"""Analytic FLOPs of a video LLM, computed from the token schedule it actually ran.

Every reducer is charged by the same formula, applied to the sequence length each
decoder layer really processed (the *schedule* an adapter reports). A pre-LLM
reducer shortens every layer; an in-LLM reducer at layer ``K`` leaves layers
``0..K-1`` at full length. Nothing here depends on how a reducer works, which is what
makes the numbers comparable (architecture.md B1.6).

Conventions (the same as :class:`torch.utils.flop_counter.FlopCounterMode`):

* one multiply-add is **2 FLOPs**; every matrix product ``[m, k] @ [k, n]`` costs
  ``2·m·k·n``;
* only matrix products are counted: linear layers, the two attention products
  (``QKᵀ`` and ``PV``), convolutions and the LM head. Norms, RoPE, softmax,
  activations, residual adds, biases and embedding look-ups are not counted (they are
  a few per cent at most and no counter agrees on them);
* attention is counted either over the **causal** lower triangle (``"causal"``, what
  a causal kernel such as FlashAttention actually computes; the default for reports)
  or over the **full** ``N×N`` square (``"full"``, what FlopCounterMode's sdpa
  formula counts; used by the tests that compare the two).

Per decoder layer with ``n`` new tokens and ``p`` cached tokens (``d`` = hidden size,
``H``/``KV`` = query/key-value heads, ``hd`` = head dim, ``I`` = MLP width)::

    linear    = 2·n·d·(H·hd)·2  +  2·n·d·(KV·hd)·2      # q, o  +  k, v (GQA)
    attention = 4·H·hd·n·(p + n)                        # "full"
              = 4·H·hd·(n·p + n·(n+1)/2)                # "causal"
    mlp       = 6·n·d·I                                  # SwiGLU: gate, up, down
    lm_head   = 2·n_logits·d·V

One decode token is the case ``n = 1``, where both conventions agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tokenred.errors import ExitCode, TokenredError

if TYPE_CHECKING:
    from tokenred.arch import ArchSpec, VisionSpec

ATTENTION_CONVENTIONS = ("causal", "full")


class MeasurementError(TokenredError):
    """A measurement was asked for with inconsistent inputs (a framework bug)."""

    exit_code = ExitCode.INTERNAL_ERROR


@dataclass(frozen=True)
class FlopBreakdown:
    """FLOPs of one forward pass of the language model, split by part.

    Attributes:
        per_layer: FLOPs of each decoder layer (linear + attention + mlp).
        tokens: New tokens each decoder layer processed (the schedule).
        linear: Sum over layers of the q, k, v and o projections.
        attention: Sum over layers of ``QKᵀ`` and ``PV``.
        mlp: Sum over layers of the MLP.
        lm_head: The output projection for ``n_logits`` positions.
        total: Everything above.
        convention: ``"causal"`` or ``"full"`` attention counting.
    """

    per_layer: tuple[int, ...]
    tokens: tuple[int, ...]
    linear: int
    attention: int
    mlp: int
    lm_head: int
    total: int
    convention: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready view (lists instead of tuples)."""
        out = asdict(self)
        out["per_layer"] = list(self.per_layer)
        out["tokens"] = list(self.tokens)
        return out


def _check_convention(attention: str) -> None:
    if attention not in ATTENTION_CONVENTIONS:
        msg = (
            f"attention convention '{attention}' is unknown; "
            f"use one of {', '.join(ATTENTION_CONVENTIONS)}"
        )
        raise MeasurementError(msg)


def _per_layer(values: Sequence[int] | None, arch: ArchSpec, what: str) -> list[int]:
    """Validate a per-layer list: one non-negative int per decoder layer."""
    if values is None:
        return [0] * arch.layers
    out = [int(v) for v in values]
    if len(out) != arch.layers or any(v < 0 for v in out):
        msg = (
            f"{what} must list one non-negative count per decoder layer "
            f"({arch.layers} for {arch.family}), got {out}"
        )
        raise MeasurementError(msg)
    return out


def attention_pairs(n: int, past: int, attention: str = "causal") -> int:
    """Return the number of (query, key) pairs one head scores.

    Args:
        n: New (query) tokens.
        past: Tokens already in the KV cache, all visible to every query.
        attention: ``"causal"`` counts the lower triangle over the new tokens,
            ``"full"`` the whole ``n × (past + n)`` rectangle.
    """
    _check_convention(attention)
    if attention == "full":
        return n * (past + n)
    return n * past + n * (n + 1) // 2


def layer_flops(
    arch: ArchSpec, n: int, past: int = 0, attention: str = "causal"
) -> tuple[int, int, int]:
    """Return ``(linear, attention, mlp)`` FLOPs of one decoder layer.

    Args:
        arch: The language model's shape.
        n: New tokens the layer processes.
        past: Tokens already cached at this layer.
        attention: Attention counting convention.
    """
    d = arch.hidden_size
    q_width, kv_width = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    linear = 2 * n * d * q_width * 2 + 2 * n * d * kv_width * 2
    # QKᵀ and PV each cost 2·hd per (query, key) pair and head.
    attn = 4 * arch.heads * arch.head_dim * attention_pairs(n, past, attention)
    mlp = 6 * n * d * arch.intermediate_size
    return linear, attn, mlp


def prefill_flops(
    arch: ArchSpec,
    schedule: Sequence[int],
    *,
    n_logits: int = 1,
    attention: str = "causal",
    past: Sequence[int] | None = None,
) -> FlopBreakdown:
    """Return the FLOPs of one LLM forward from the per-layer token schedule.

    Args:
        arch: The language model's shape.
        schedule: Tokens processed by each decoder layer (``len == arch.layers``);
            layers before an in-LLM reduction see the full length.
        n_logits: Positions the LM head is applied to (1 with ``logits_to_keep=1``).
        attention: ``"causal"`` (default, what causal kernels compute) or ``"full"``
            (what FlopCounterMode counts).
        past: Tokens already in each layer's KV cache (KV reuse, decode); ``None``
            for a plain prefill.

    Returns:
        The breakdown; ``total`` is the headline number.

    Raises:
        MeasurementError: A list does not have one entry per layer.
    """
    _check_convention(attention)
    tokens = _per_layer(schedule, arch, "schedule")
    cached = _per_layer(past, arch, "past")
    parts = [
        layer_flops(arch, n, p, attention) for n, p in zip(tokens, cached, strict=True)
    ]
    linear = sum(p[0] for p in parts)
    attn = sum(p[1] for p in parts)
    mlp = sum(p[2] for p in parts)
    head = 2 * n_logits * arch.hidden_size * arch.vocab_size
    return FlopBreakdown(
        per_layer=tuple(sum(p) for p in parts),
        tokens=tuple(tokens),
        linear=linear,
        attention=attn,
        mlp=mlp,
        lm_head=head,
        total=linear + attn + mlp + head,
        convention=attention,
    )


def decode_flops(
    arch: ArchSpec, cache_lens: Sequence[int], n_logits: int = 1, steps: int = 1
) -> int:
    """Return the FLOPs of ``steps`` consecutive decode tokens.

    Args:
        arch: The language model's shape.
        cache_lens: KV entries at each layer *before* the first of these tokens;
            right after prefill this is the prefill schedule.
        n_logits: Logit positions per step (1 for greedy decoding).
        steps: Tokens decoded; step ``i`` sees ``cache_lens[l] + i`` cached keys.

    Returns:
        The total; divide by ``steps`` for the per-token figure.
    """
    total = 0
    base = _per_layer(cache_lens, arch, "cache_lens")
    ones = [1] * arch.layers
    for i in range(steps):  # loop over decode steps, not tokens
        past = [c + i for c in base]
        total += prefill_flops(
            arch, ones, n_logits=n_logits, attention="full", past=past
        ).total
    return total


def equivalent_tokens(visual_schedule: Sequence[int]) -> float:
    """Return the layer-averaged number of visual tokens.

    A pre-LLM reducer keeping ``N'`` tokens and an in-LLM reducer keeping ``N`` for
    ``K`` layers and ``N''`` after have comparable costs when their layer averages
    match; this is the number reports plot against.
    """
    if not visual_schedule:
        return 0.0
    return float(sum(visual_schedule)) / len(visual_schedule)


@dataclass(frozen=True)
class VisionFlops:
    """FLOPs of the vision tower and projector for one video.

    Attributes:
        patch_embed: The patch-embedding convolution.
        linear: Attention projections of all blocks.
        attention: ``QKᵀ`` and ``PV`` of all blocks (bidirectional, full square).
        mlp: MLPs of all blocks.
        projector: The projector term (``projector_flops_per_token × n_visual``).
        total: Everything above.
    """

    patch_embed: int
    linear: int
    attention: int
    mlp: int
    projector: int
    total: int


def vision_flops_breakdown(
    vision: VisionSpec, seq_len: int, num_seqs: int, *, n_visual: int | None = None
) -> VisionFlops:
    """Return the vision-tower FLOPs split by part (see :func:`vision_flops`)."""
    d, inter = vision.hidden_size, vision.intermediate_size
    if vision.image_size > 0:
        # Fixed-resolution towers (CLIP, SigLIP): the conv sees the patch grid only;
        # extra sequence positions (CLIP's class token) are not convolved.
        patches = (vision.image_size // vision.patch_size) ** 2
    else:
        patches = seq_len  # dynamic towers (Qwen2-VL): one position per patch
    kernel = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    patch_embed = 2 * num_seqs * patches * d * kernel
    per_seq_linear = 2 * seq_len * d * d * 4  # q, k, v, o
    per_seq_attn = 4 * seq_len * seq_len * d  # heads × head_dim == d
    per_seq_mlp = (6 if vision.gated_mlp else 4) * seq_len * d * inter
    blocks = vision.layers * num_seqs
    projector = vision.projector_flops_per_token * (n_visual or 0)
    linear = blocks * per_seq_linear
    attn = blocks * per_seq_attn
    mlp = blocks * per_seq_mlp
    return VisionFlops(
        patch_embed=patch_embed,
        linear=linear,
        attention=attn,
        mlp=mlp,
        projector=projector,
        total=patch_embed + linear + attn + mlp + projector,
    )


def vision_flops(
    vision: VisionSpec, seq_len: int, num_seqs: int, *, n_visual: int | None = None
) -> int:
    """Return the FLOPs of encoding one video with a ViT-style tower.

    The tower runs ``num_seqs`` independent sequences (frames, or temporal patch
    groups for Qwen2-VL) of ``seq_len`` positions through ``vision.layers`` blocks
    with bidirectional attention.

    Args:
        vision: The tower's shape.
        seq_len: Positions per sequence, including any class token.
        num_seqs: Sequences (frames or clips) encoded.
        n_visual: Visual tokens leaving the projector; the projector term is
            ``vision.projector_flops_per_token × n_visual`` and is omitted when
            ``None``.
    """
    return vision_flops_breakdown(vision, seq_len, num_seqs, n_visual=n_visual).total


def sample_flops(
    arch: ArchSpec,
    schedule: Sequence[int],
    *,
    decode_steps: int = 0,
    vision_seq_len: int | None = None,
    vision_num_seqs: int | None = None,
    n_visual: int | None = None,
    attention: str = "causal",
) -> dict[str, Any]:
    """Return the per-sample FLOPs a run record stores.

    Args:
        arch: The language model's shape (``arch.vision`` for the tower).
        schedule: Tokens each decoder layer processed at prefill.
        decode_steps: Decode forwards after prefill (generated tokens minus the one
            that came from the prefill logits).
        vision_seq_len: Positions per vision-encoder sequence (None: no vision term).
        vision_num_seqs: Vision-encoder sequences.
        n_visual: Visual tokens out of the projector (projector term).
        attention: Prefill attention convention.

    Returns:
        ``{"prefill", "decode_per_token", "vision", "attention"}``, the fields of
        :class:`tokenred.results.FlopsRecord`; missing parts are None.
    """
    prefill = prefill_flops(arch, schedule, attention=attention).total
    per_token = None
    if decode_steps > 0:
        per_token = decode_flops(arch, schedule, steps=decode_steps) / decode_steps
    vision = None
    if arch.vision is not None and vision_seq_len and vision_num_seqs:
        vision = vision_flops(
            arch.vision, vision_seq_len, vision_num_seqs, n_visual=n_visual
        )
    return {
        "prefill": prefill,
        "decode_per_token": per_token,
        "vision": vision,
        "attention": attention,
    }


def prefix_flops(
    arch: ArchSpec, prefix_schedule: Sequence[int], *, attention: str = "causal"
) -> FlopBreakdown:
    """Return the FLOPs of prefilling a shared video prefix once (KV reuse).

    The prefix (system prompt + video, reduced) is a plain prefill of
    ``prefix_schedule`` tokens per layer that needs no logits: no question follows
    it yet. Its LM head is not charged (an adapter may compute one throwaway
    position; that is ``2·d·V`` FLOPs, below a decode token).

    Args:
        arch: The language model's shape.
        prefix_schedule: Tokens of the prefix each decoder layer processed.
        attention: ``"causal"`` or ``"full"``.
    """
    return prefill_flops(arch, prefix_schedule, n_logits=0, attention=attention)


def suffix_flops(
    arch: ArchSpec,
    prefix_schedule: Sequence[int],
    question_tokens: int,
    *,
    attention: str = "causal",
) -> FlopBreakdown:
    """Return the FLOPs of prefilling one question after a cached prefix.

    The ``question_tokens`` new tokens pass every layer and attend to the cached
    prefix of that layer plus, causally, to each other; the LM head runs at the
    last position. Under the causal convention
    ``prefix_flops(P) + suffix_flops(P, Q) == prefill_flops(P + Q)`` exactly,
    layer by layer, for any schedule whose question part is ``Q`` tokens on every
    layer (pre-LLM and in-LLM reduction both only shorten the video), so a reused
    answer is charged exactly what a full prefill would have cost minus the prefix
    it did not recompute.

    Args:
        arch: The language model's shape.
        prefix_schedule: Tokens of the cached prefix at each decoder layer.
        question_tokens: Tokens after the prefix (question, options, answer cue and
            chat markers).
        attention: ``"causal"`` or ``"full"`` (``"full"`` counts each new token
            against the whole ``prefix + question`` square and does not add up).

    Raises:
        MeasurementError: A negative question length or a malformed schedule.
    """
    if question_tokens < 0:
        msg = f"question_tokens must be >= 0, got {question_tokens}"
        raise MeasurementError(msg)
    return prefill_flops(
        arch,
        [question_tokens] * arch.layers,
        n_logits=1,
        attention=attention,
        past=prefix_schedule,
    )


def reuse_flops(
    arch: ArchSpec,
    prefix_schedule: Sequence[int],
    question_tokens: int,
    *,
    owns_prefix: bool,
    attention: str = "causal",
) -> dict[str, int]:
    """Return the prefill FLOPs of one answer from a shared prefix, by part.

    Args:
        arch: The language model's shape.
        prefix_schedule: Tokens of the cached prefix at each decoder layer.
        question_tokens: Tokens prefilled after the prefix.
        owns_prefix: True for the answer that built the prefix (the first of its
            video): it is charged the prefix too; later answers only their suffix.
        attention: Prefill attention convention.

    Returns:
        ``{"prefill", "prefix", "question"}``: ``prefill`` is what this answer
        computed (``question`` plus ``prefix`` when it owns it), ``prefix`` the
        whole prefix (whoever paid for it) and ``question`` the suffix alone.
    """
    prefix = prefix_flops(arch, prefix_schedule, attention=attention).total
    question = suffix_flops(
        arch, prefix_schedule, question_tokens, attention=attention
    ).total
    return {
        "prefill": question + (prefix if owns_prefix else 0),
        "prefix": prefix,
        "question": question,
    }


def reduced_schedule(
    num_layers: int, layer: int, length: int, n_visual: int, kept: int
) -> list[int]:
    """Return the per-layer sequence lengths when ``kept`` of ``n_visual`` survive.

    Layers ``< layer`` process the whole ``length``; the rest process ``length``
    minus the dropped visual tokens (``layer = 0`` is a pre-LLM reduction).
    """
    reduced = length - n_visual + kept
    return [length] * layer + [reduced] * (num_layers - layer)


def flops_fraction(
    arch: ArchSpec, *, length: int, n_visual: int, layer: int, kept: int
) -> float:
    """Return the prefill FLOPs with ``kept`` visual tokens over the unreduced ones.

    The same analytic formula (causal attention, one logit) as every record, so a
    budget stated in FLOPs lands on exactly the figure the report shows.
    """
    full = prefill_flops(arch, [length] * arch.layers).total
    cut = reduced_schedule(arch.layers, layer, length, n_visual, kept)
    return prefill_flops(arch, cut).total / full


def flops_range(
    arch: ArchSpec, *, length: int, n_visual: int, layer: int
) -> tuple[float, float]:
    """Return the smallest and largest FLOPs fraction a reduction can reach.

    The smallest keeps one visual token; the largest keeps them all (1.0).
    """
    low = flops_fraction(
        arch, length=length, n_visual=n_visual, layer=layer, kept=min(1, n_visual)
    )
    return low, 1.0


def tokens_for_flops(
    arch: ArchSpec, fraction: float, *, length: int, n_visual: int, layer: int
) -> int | None:
    """Return the largest visual-token count whose prefill FLOPs fit ``fraction``.

    The FLOPs fraction is strictly increasing in the kept count, so a bisection over
    the integer counts (``log2 N`` evaluations of the formula, no loop over tokens)
    finds the count whose FLOPs are at most ``fraction`` of unreduced and as close
    to it as the integer count allows.

    Args:
        arch: The language model's shape.
        fraction: Target prefill FLOPs over the unreduced prefill FLOPs of the same
            prompt and video, in (0, 1].
        length: Unreduced prompt length (text + ``n_visual``).
        n_visual: Visual tokens entering the reduction.
        layer: Decoder layer the reduction runs before (0 before the LLM).

    Returns:
        The count in ``[1, n_visual]``, or None when even one kept token costs
        more than ``fraction`` (see :func:`flops_range`).
    """
    if n_visual <= 0:
        return 0

    def fits(kept: int) -> bool:
        ratio = flops_fraction(
            arch, length=length, n_visual=n_visual, layer=layer, kept=kept
        )
        return ratio <= fraction

    if not fits(1):
        return None
    lo, hi = 1, n_visual  # invariant: fits(lo); answer in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
