"""GPU suite: TTFT, reducer cost, host syncs and memory of every reducer on a 7B layout.

One command on one H100/H200 builds LLaVA-Video-7B's layout (LLaVA-OneVision class:
Qwen2-7B language model, SigLIP-so400m tower, 14x14 = 196 tokens per frame after
2x2 pooling) from a config alone, with random bf16 weights: the time of a forward
pass does not depend on the weight values. It then measures, through tokenred's own
adapter (``prefill``), insertion engine (``ReductionPlan``, pre-LLM splice or
in-LLM hooks at layer K) and timing protocol (``measure_repeats``: CUDA events,
``--warmup`` untimed passes, median and IQR of ``--repeats`` timed ones):

* TTFT = the LLM prefill with the reducer included and vision excluded (as in the
  paper), unreduced and for every reducer x budget x stage;
* the reducer's own time (the engine's ``reducer`` phase) and its share of TTFT;
* host-device synchronisations inside the reducer call and in the whole prefill,
  counted with ``torch.cuda.set_sync_debug_mode("warn")`` (CUDA only; null on CPU),
  with the source lines that caused them;
* peak memory (``max_memory_allocated``) and KV-cache bytes after prefill;
* the FLOPs-ideal speed-up (analytic unreduced / reduced prefill FLOPs) beside the
  measured one;
* whether any decoder layer received an explicit attention mask (a mask rules out
  the flash kernel on CUDA; sdpa is restricted to ``--sdpa-backend``).

Visual tokens are synthetic projected features with video-like redundancy
(``sttm_speed.smooth_video``) fed to the adapter as :class:`VideoFeatures`, the
same object the runner's feature cache replays, so no vision tower runs: vision is
excluded from TTFT anyway, and merging reducers see realistic temporal redundancy
rather than white noise.

Results go to ``--out`` (default ``benchmarks/results/``) as one JSON file and one
Markdown table, written after every case so a run cut short keeps what it measured.
``--max-minutes`` skips the remaining cases (recorded as such) once the next one
would not fit.

    python benchmarks/gpu_suite.py --frames 64 128 --max-minutes 7     # GPU
    python benchmarks/gpu_suite.py --tiny --device cpu --frames 2      # CPU smoke

The paper (A100-80G, FlashAttention-2, bf16, LLaVA-Video-7B) reports STTM at 2.07x
(50 %) and 3.02x (30 %) faster TTFT than the unreduced model. CPU runs are smoke
tests only: their numbers say nothing about GPU speed-ups.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from tokenred.testing.host_reads import SYNC_TEXT, record_host_reads

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = "tokenred.gpu_suite/1"
PROMPT = (
    "Which color was the object that appeared briefly?\nA. red\nB. green\nC. blue\n"
    "D. yellow\nAnswer with the option's letter from the given choices directly."
)
EXCLUDED = {
    "none": "the unreduced baseline is always measured",
    "template_stride": "the plugin template is an example, not a first-party method",
}
# Run order: the flagship first, so a time-limited run measures it before the rest.
PRIORITY = ("sttm", "tome", "fastv", "dycoke_ttm", "pool", "random")

LAYOUTS: dict[str, dict[str, Any]] = {
    "llava_video_7b": {
        # Qwen2-7B, the LLM of LLaVA-Video-7B-Qwen2
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
        },
        # SigLIP-so400m-patch14-384 as LLaVA-OneVision uses it (last layer and
        # pooling head dropped): 27x27 patches, bilinear-pooled to 14x14 = 196.
        "vision": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 26,
            "num_attention_heads": 16,
            "image_size": 384,
            "patch_size": 14,
        },
    },
    "tiny": {  # CPU smoke test: same token layout (196 per frame), toy widths
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 768,
        },
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 56,
            "patch_size": 2,
        },
    },
}


# --------------------------------------------------------------------------- model
def write_checkpoint(out: Path, layout: dict[str, Any]) -> Path:
    """Write a weightless LLaVA-OneVision checkpoint: config and tiny tokenizer.

    The word-level tokenizer keeps the checkpoint offline; its ids are far below the
    7B vocabulary, whose embedding and LM-head tables keep their real size.
    """
    from tokenred.adapters._tiny import build_tokenizer, tiny_config

    tokenizer = build_tokenizer()
    text = dict(layout["text"])
    vocab = int(text.pop("vocab_size"))
    config = tiny_config(
        "llava_onevision", tokenizer, text=text, vision=dict(layout["vision"])
    )
    config.text_config.vocab_size = max(vocab, len(tokenizer))
    config.vision_config.vision_use_head = False
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def load_adapter(args: argparse.Namespace, path: Path) -> tuple[Any, dict[str, Any]]:
    """Load the checkpoint through the ``tiny`` adapter (random init allowed).

    The parameters are created directly on the device (``torch.device`` as the
    default-device context; the smoke test runs the same path on CPU):
    initialising 7.6 B parameters on the host first would cost minutes of a short
    device lease. Should that fail, the plain host init runs and the reason is
    recorded.
    """
    from tokenred.adapter import AdapterConfig, DType, create_adapter
    from tokenred.errors import TokenredError
    from tokenred.registry import Registries

    regs = Registries.from_plugin_manager(plugin_manager())
    cfg = AdapterConfig(
        name="tiny",
        path=str(path),
        dtype=DType(args.dtype),
        device=args.device,
        attn_implementation="sdpa",
    )
    adapter = create_adapter(regs.models, cfg)
    t0 = time.perf_counter()
    info: dict[str, Any] = {"init_on_device": True, "init_error": None}
    try:
        with torch.device(args.device):
            adapter.load()
    except (RuntimeError, TypeError, ValueError, TokenredError) as exc:
        info["init_on_device"] = False
        info["init_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        adapter.load()
    info["load_s"] = time.perf_counter() - t0
    return adapter, info


_PLUGIN_DIRS = ("dycoke_ttm", "fastv", "pool", "sttm", "tome")


def plugin_manager() -> Any:
    """Return tokenred's plugin manager, adding the in-repo plugins if not installed.

    On a device machine where only the source tree was copied (``PYTHONPATH``, no
    ``pip install``), the plugins' entry points are missing; their packages are then
    imported from ``plugins/*/`` and registered explicitly.
    """
    from tokenred.plugins import get_plugin_manager

    pm = get_plugin_manager()
    if all(pm.has_plugin(name) for name in _PLUGIN_DIRS):
        return pm
    extra = []
    for name in _PLUGIN_DIRS:
        if pm.has_plugin(name):
            continue
        src = ROOT / "plugins" / name
        if str(src) not in sys.path:
            sys.path.insert(0, str(src))
        extra.append(importlib.import_module(f"tokenred_{name}"))
    return get_plugin_manager(extra=extra)


def _sibling(name: str) -> Any:
    """Import a module that lives next to this script (benchmarks is no package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    if spec is None or spec.loader is None:  # pragma: no cover - file is in the repo
        raise ImportError(name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_video(adapter: Any, frames: int) -> Any:
    """Return ``VideoFeatures`` of ``frames`` frames in the adapter's token layout."""
    from tokenred.model_io import VideoFeatures

    arch = adapter.arch
    vis = arch.vision
    side = math.ceil((vis.image_size // vis.patch_size) / 2)
    grid = (frames, side, side)
    dtype = adapter.config.dtype.torch
    # The STTM benchmark's smooth realistic features (a coarse Gaussian field
    # upsampled per frame, per-token noise, slow drift): video-like redundancy.
    video = _sibling("sttm_speed").smooth_video(grid, arch.hidden_size)
    feats = video.reshape(-1, arch.hidden_size).to(adapter.device, dtype)  # [T*H*W, C]
    gen = torch.Generator().manual_seed(1)
    newline = torch.randn(arch.hidden_size, generator=gen).to(adapter.device, dtype)
    return VideoFeatures(
        features=feats,
        grid=grid,
        extra={"newline": newline},
        vision_seq_len=(vis.image_size // vis.patch_size) ** 2,
        vision_num_seqs=frames,
    )


# ------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class Case:
    """One point of the suite: frames x reducer x stage x budget."""

    frames: int
    reducer: str
    stage: str
    layer: int
    budget: float

    @property
    def key(self) -> str:
        """A short label for logs."""
        if self.reducer == "none":
            return f"T={self.frames} unreduced"
        where = "pre_llm" if self.stage == "pre_llm" else f"in_llm K={self.layer}"
        return f"T={self.frames} {self.reducer} {self.budget:.0%} {where}"


@dataclass
class SyncLog:
    """Synchronising CUDA calls caught during one prefill, and the reducer's share."""

    total: int = 0
    reducer: int = 0
    sites: Counter[str] = field(default_factory=Counter)
    reducer_sites: Counter[str] = field(default_factory=Counter)


@contextmanager
def count_syncs(method: str | None) -> Iterator[tuple[list[Any], SyncLog]]:
    """Record the host-device synchronisations of the body.

    ``"cuda"``: every synchronising CUDA call, via ``set_sync_debug_mode("warn")``
    (PyTorch warns once per call; ``simplefilter("always")`` keeps repeats at one
    line). ``"cpu_proxy"``: on CPU nothing synchronises, so the ops that would on
    CUDA are recorded by :func:`tokenred.testing.host_reads.record_host_reads`
    (scalar reads, ``nonzero``, boolean-mask indexing, ``unique``, ``equal``,
    ``repeat_interleave`` without ``output_size``, ``Tensor.tolist``); it is a
    lower bound. ``None``: off.
    Yields the raw record list (the reducer phase marks its slice of it) and the
    log filled on exit.
    """
    log = SyncLog()
    if method is None:
        yield [], log
        return
    if method == "cpu_proxy":
        with record_host_reads(skip=[str(Path(__file__).resolve())]) as hits:
            yield hits, log
        caught: list[Any] = hits
    else:
        previous = torch.cuda.get_sync_debug_mode()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield caught, log
            finally:
                torch.cuda.set_sync_debug_mode(previous)
    found = [w for w in caught if SYNC_TEXT in str(w.message)]
    log.total = len(found)
    log.sites.update(f"{_short(w.filename)}:{w.lineno}" for w in found)


def _short(filename: str) -> str:
    path = Path(filename)
    for anchor in (ROOT, Path(torch.__file__).parent.parent):
        try:
            return str(path.resolve().relative_to(anchor.resolve()))
        except ValueError:
            continue
    return filename


class _ReducerMarks:
    """Active-timer stand-in: times the phase and marks its slice of the warnings."""

    def __init__(
        self,
        timer: Callable[[str], AbstractContextManager[Any]] | None,
        caught: list[Any],
        log: SyncLog,
    ) -> None:
        self.timer, self.caught, self.log = timer, caught, log

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = len(self.caught)
        inner = self.timer(phase) if self.timer is not None else nullcontext()
        with inner:
            yield
        if phase == "reducer":
            hits = [w for w in self.caught[start:] if SYNC_TEXT in str(w.message)]
            self.log.reducer += len(hits)
            self.log.reducer_sites.update(
                f"{_short(w.filename)}:{w.lineno}" for w in hits
            )


class MaskWatch:
    """Pre-hooks noting whether any decoder layer got an explicit attention mask.

    CUDA's flash kernel accepts only ``is_causal`` (no ``attn_mask``), so a mask
    anywhere forces another sdpa backend; the CPU smoke test asserts none is seen.
    """

    def __init__(self, layers: Any) -> None:
        self.layers, self.seen = layers, False
        self._handles: list[Any] = []

    def __enter__(self) -> MaskWatch:
        def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            if kwargs.get("attention_mask") is not None:
                self.seen = True

        self._handles = [
            layer.register_forward_pre_hook(hook, with_kwargs=True)
            for layer in self.layers
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()


def sdpa_context(backend: str) -> AbstractContextManager[Any]:
    """Restrict ``scaled_dot_product_attention`` to ``backend`` (``any``: no limit)."""
    if backend == "any":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel([kinds[backend]])


def probe_sdpa(backend: str, adapter: Any) -> str | None:
    """Return why ``backend`` cannot run the model's causal GQA attention, or None."""
    arch = adapter.arch
    dtype = adapter.config.dtype.torch
    q = torch.randn(
        1, arch.heads, 64, arch.head_dim, device=adapter.device, dtype=dtype
    )
    k = torch.randn(
        1, arch.kv_heads, 64, arch.head_dim, device=adapter.device, dtype=dtype
    )
    try:
        with sdpa_context(backend):
            torch.nn.functional.scaled_dot_product_attention(
                q, k, k, is_causal=True, enable_gqa=arch.heads != arch.kv_heads
            )
    except RuntimeError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def make_plan(regs: Any, case: Case) -> Any:
    """Build the framework's :class:`ReductionPlan` for ``case`` (None: unreduced)."""
    if case.reducer == "none":
        return None
    from tokenred.plan import BudgetSpec, ReductionPlan
    from tokenred.tokens import Stage

    entry = regs.reducers.entry(case.reducer)
    cls = regs.reducers.get(case.reducer)
    return ReductionPlan(
        reducer=cls(cls.Config(name=case.reducer)),
        stage=Stage(case.stage),
        layer=case.layer if case.stage == "in_llm" else 0,
        budget=BudgetSpec(ratio=case.budget),
        seed=0,
        sample_id=f"gpu-suite-{case.frames}",
        origin=entry.origin,
    )


def measure_case(
    adapter: Any, regs: Any, video: Any, case: Case, args: argparse.Namespace
) -> dict[str, Any]:
    """Time one case with the runner's protocol, then probe syncs and memory."""
    from tokenred.measure import measure_repeats, prefill_flops, reset_peak
    from tokenred.measure.latency import timing

    plan = make_plan(regs, case)
    sdpa = args.sdpa_used
    cuda = adapter.device.type == "cuda"

    def once(timer: Any) -> Any:
        # The engine times the reducer on the active timer (measure.timing).
        with timing(timer), sdpa_context(sdpa), timer("prefill"):
            return adapter.prefill(video, PROMPT, plan)

    rep = measure_repeats(
        once, warmup=args.warmup, repeats=args.repeats, device=adapter.device
    )
    summary = rep.summary()
    del rep
    # One untimed probe pass: syncs (debug mode slows the host), peak memory, masks.
    # Reference counting frees the timed passes' states; gc.collect() would cost
    # ~0.5 s per case with transformers loaded and is run per frame count only.
    if cuda:
        torch.cuda.synchronize(adapter.device)
        torch.cuda.empty_cache()
    before = (
        torch.cuda.memory_allocated(adapter.device)
        if cuda
        else None  # CPU RSS includes the whole process; no baseline to subtract
    )
    probe = reset_peak(adapter.device)
    method = "cuda" if cuda else "cpu_proxy"
    with count_syncs(method) as (caught, syncs), MaskWatch(adapter.layers) as masks:
        marks = _ReducerMarks(None, caught, syncs)
        with timing(marks), sdpa_context(sdpa):  # type: ignore[arg-type]
            state = adapter.prefill(video, PROMPT, plan).stats
    if cuda:  # outside the counted region: an explicit synchronize counts too
        torch.cuda.synchronize(adapter.device)
    peak = probe.peak_bytes()
    flops = prefill_flops(adapter.arch, state.schedule)
    row: dict[str, Any] = {
        "frames": case.frames,
        "reducer": case.reducer,
        "stage": case.stage,
        "layer": case.layer if case.stage == "in_llm" else 0,
        "budget_ratio": case.budget,
        "status": "ok",
        "reason": None,
        "n_visual_in": state.n_visual_in,
        "n_visual_out": state.n_visual_out,
        "prompt_len": state.prompt_len,
        "schedule": list(state.schedule),
        "ttft_ms": summary["prefill"],
        "reducer_ms": summary.get("reducer"),
        "prefill_flops": flops.total,
        "kv_cache_bytes": state.kv_cache_bytes,
        "peak_memory": {
            "kind": probe.kind,
            "peak_bytes": peak,
            "above_start_bytes": peak - before if before is not None else None,
        },
        "syncs": {
            "method": "cuda_sync_debug" if cuda else "cpu_proxy",
            "prefill": syncs.total,
            "reducer": syncs.reducer if plan is not None else None,
            "sites": dict(syncs.sites.most_common()),
            "reducer_sites": dict(syncs.reducer_sites.most_common()),
        },
        "attention_mask_seen": masks.seen,
        "sdpa_backend": sdpa,
        "reduction_info": dict(state.reduction_info),
    }
    del state
    return row


def add_ratios(row: dict[str, Any], base: dict[str, Any] | None) -> None:
    """Fill speed-ups, FLOPs-ideal speed-up, reducer share and KV ratio in place."""
    row["speedup"] = row["speedup_range"] = row["flops_ideal_speedup"] = None
    row["kv_cache_ratio"] = None
    red = row.get("reducer_ms")
    ttft = row["ttft_ms"]
    row["reducer_share"] = (
        red["median"] / ttft["median"] if red and ttft["median"] else None
    )
    if base is None or base.get("status") != "ok":
        return
    b = base["ttft_ms"]
    row["speedup"] = b["median"] / ttft["median"]
    # Conservative bounds: slowest baseline over fastest case and the reverse.
    row["speedup_range"] = [b["min"] / ttft["max"], b["max"] / ttft["min"]]
    row["flops_ideal_speedup"] = base["prefill_flops"] / row["prefill_flops"]
    if base["kv_cache_bytes"]:
        row["kv_cache_ratio"] = row["kv_cache_bytes"] / base["kv_cache_bytes"]


# ------------------------------------------------------------------- the suite
def plan_cases(
    regs: Any, args: argparse.Namespace
) -> tuple[list[Case], list[dict[str, Any]]]:
    """Return the cases to run and the rows of combinations skipped by design."""
    from tokenred.tokens import Need, Stage

    cases: list[Case] = []
    skipped: list[dict[str, Any]] = []
    for frames in args.frames:
        cases.append(Case(frames, "none", "none", 0, 1.0))
        for name in args.reducers:
            cls = regs.reducers.get(name)
            for stage in args.stages:
                for budget in args.budgets:
                    case = Case(frames, name, stage, args.layer, budget)
                    why = None
                    if Stage(stage) not in cls.stages:
                        have = ", ".join(sorted(s.value for s in cls.stages))
                        why = f"reducer supports stages {have} only"
                    elif Stage(stage) is Stage.PRE_LLM and Need.ATTENTION in cls.needs:
                        why = "needs attention scores, which exist only in the LLM"
                    if why is None:
                        cases.append(case)
                    else:
                        skipped.append(_skip(case, why))
    return cases, skipped


def _skip(case: Case, reason: str, status: str = "skipped") -> dict[str, Any]:
    return {
        "frames": case.frames,
        "reducer": case.reducer,
        "stage": case.stage,
        "layer": case.layer if case.stage == "in_llm" else 0,
        "budget_ratio": case.budget,
        "status": status,
        "reason": reason,
    }


def order_reducers(names: list[str]) -> list[str]:
    """Sort reducer names by :data:`PRIORITY` (unknown ones last, alphabetically)."""
    rank = {n: i for i, n in enumerate(PRIORITY)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def environment(args: argparse.Namespace, adapter: Any) -> dict[str, Any]:
    """Device, versions and git state, via tokenred's manifest probes."""
    from tokenred.measure.env import device_info, git_state, package_versions

    info = {
        "device": device_info(str(adapter.device)),
        "versions": package_versions(),
        "torch_cuda": torch.version.cuda,
        "git": git_state(ROOT),
        "sdpa_requested": args.sdpa_backend,
        "sdpa_used": args.sdpa_used,
        "sdpa_probe_error": args.sdpa_probe_error,
    }
    return info


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the model once, run every case within the time budget, write results."""
    start = time.perf_counter()
    deadline = start + args.max_minutes * 60.0
    layout_name = "tiny" if args.tiny else "llava_video_7b"
    layout = LAYOUTS[layout_name]
    from tokenred.registry import Registries

    regs = Registries.from_plugin_manager(plugin_manager())
    if args.reducers is None:
        names = [e.name for e in regs.reducers if e.name not in EXCLUDED]
        args.reducers = order_reducers(names)
    for name in args.reducers:
        regs.reducers.entry(name)  # fail early, with the registry's message
    with tempfile.TemporaryDirectory(prefix="tokenred-suite-") as tmp:
        adapter, load_info = load_adapter(args, write_checkpoint(Path(tmp), layout))
    args.sdpa_probe_error = probe_sdpa(args.sdpa_backend, adapter)
    args.sdpa_used = "any" if args.sdpa_probe_error else args.sdpa_backend
    desc = adapter.describe()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    env = environment(args, adapter)
    slug = _slug(env["device"].get("name") or env["device"]["kind"])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_name = f"gpu_suite-{layout_name}-{slug}-{stamp}"
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "created": stamp,
        "command": ["benchmarks/gpu_suite.py", *(args.argv or [])],
        "environment": env,
        "model": {
            "layout": layout_name,
            "text": layout["text"],
            "vision": layout["vision"],
            "parameters": desc.get("parameters"),
            "dtype": args.dtype,
            "attn_implementation": desc.get("attn_implementation"),
            "random_weights": True,
            **load_info,
        },
        "protocol": {
            "ttft": "LLM prefill incl. the reducer and splicing; vision excluded",
            "warmup": args.warmup,
            "repeats": args.repeats,
            "statistic": "median; spread: iqr, min, max of the timed repeats",
            "speedup": "unreduced median TTFT / case median TTFT (same frames)",
            "speedup_range": "[unreduced min / case max, unreduced max / case min]",
            "flops": "analytic prefill FLOPs from the per-layer schedule (causal)",
            "syncs": "one untimed pass; CUDA: set_sync_debug_mode('warn'); CPU: "
            "aten ops that would synchronise on CUDA (a lower bound: no tolist, "
            "no host-to-device copies)",
            "inputs": "synthetic projected features (sttm_speed.smooth_video)",
            "max_minutes": args.max_minutes,
        },
        "cases": [],
        "elapsed_s": None,
        "complete": False,
    }
    json_path = out_dir / f"{base_name}.json"
    md_path = out_dir / f"{base_name}.md"
    doc["files"] = {"json": str(json_path), "markdown": str(md_path)}
    cases, skipped = plan_cases(regs, args)
    rows: list[dict[str, Any]] = list(skipped)
    base: dict[int, dict[str, Any]] = {}
    videos: dict[int, Any] = {}
    last = 0.0
    for case in cases:
        now = time.perf_counter()
        if now + last * args.guard_factor > deadline:
            rows.append(
                _skip(case, f"time budget of {args.max_minutes} min", "timeout")
            )
            continue
        if case.frames not in videos:
            videos.clear()
            gc.collect()
            videos[case.frames] = make_video(adapter, case.frames)
        try:
            row = measure_case(adapter, regs, videos[case.frames], case, args)
        except (RuntimeError, ValueError) as exc:  # OOM, kernel selection, contract
            if adapter.device.type == "cuda":
                torch.cuda.empty_cache()
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            row = _skip(case, f"{type(exc).__name__}: {text}", "error")
        if row["status"] == "ok":
            if case.reducer == "none":
                base[case.frames] = row
            add_ratios(row, base.get(case.frames))
        row["wall_s"] = time.perf_counter() - now
        last = row["wall_s"] if case.reducer != "none" else max(last, row["wall_s"])
        rows.append(row)
        _progress(row)
        doc["cases"] = _sorted(rows)
        doc["elapsed_s"] = time.perf_counter() - start
        _write(doc, json_path, md_path)
    doc["cases"] = _sorted(rows)
    doc["elapsed_s"] = time.perf_counter() - start
    doc["complete"] = True
    _write(doc, json_path, md_path)
    return doc


def _slug(text: str) -> str:
    keep = [c.lower() if c.isalnum() else "-" for c in text]
    return "-".join(filter(None, "".join(keep).split("-")))[:40] or "device"


def _sorted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rank = {n: i for i, n in enumerate(("none", *PRIORITY))}
    stage = {"none": 0, "pre_llm": 1, "in_llm": 2}
    return sorted(
        rows,
        key=lambda r: (
            r["frames"],
            stage.get(r["stage"], 3),
            -r["budget_ratio"],
            rank.get(r["reducer"], len(rank)),
            r["reducer"],
        ),
    )


def _progress(row: dict[str, Any]) -> None:
    case = Case(
        row["frames"], row["reducer"], row["stage"], row["layer"], row["budget_ratio"]
    )
    if row["status"] != "ok":
        print(f"{case.key}: {row['status']} ({row['reason']})", file=sys.stderr)
        return
    speed = row["speedup"]
    extra = "" if speed is None else f", speed-up {speed:.2f}x"
    print(
        f"{case.key}: TTFT {row['ttft_ms']['median']:.1f} ms{extra} "
        f"({row['wall_s']:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def _write(doc: dict[str, Any], json_path: Path, md_path: Path) -> None:
    from tokenred.measure.env import jsonable

    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(jsonable(doc), indent=2) + "\n")
    os.replace(tmp, json_path)
    md_path.write_text(markdown(doc))


def _fmt(value: float | None, spec: str, none: str = "n/a") -> str:
    return none if value is None else format(value, spec)


def markdown(doc: dict[str, Any]) -> str:
    """Render the suite's JSON as a Markdown table (one row per case)."""
    env = doc["environment"]
    dev = env["device"]
    kind = "GPU" if dev["kind"] == "cuda" else "CPU, smoke test only"
    versions = env["versions"]
    lines = [
        f"# tokenred GPU suite: {doc['model']['layout']} on {dev.get('name')} ({kind})",
        "",
        f"torch {versions.get('torch')}, CUDA {env.get('torch_cuda')}, transformers "
        f"{versions.get('transformers')}, {doc['model']['dtype']}, sdpa backend "
        f"{env['sdpa_used']}, git {str(env['git'].get('sha'))[:10]}. TTFT = LLM "
        "prefill with the reducer, vision excluded; median ± IQR of "
        f"{doc['protocol']['repeats']} runs after {doc['protocol']['warmup']} "
        "warm-up runs.",
        "",
        "| frames | reducer | stage | budget | N in → out | TTFT ms | speed-up "
        "(range) | FLOPs-ideal | reducer ms (share) | syncs reducer / prefill | "
        "peak GiB | KV MiB | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["cases"]:
        where = r["stage"] if r["stage"] != "in_llm" else f"in_llm K={r['layer']}"
        budget = "100%" if r["reducer"] == "none" else f"{r['budget_ratio']:.0%}"
        head = f"| {r['frames']} | {r['reducer']} | {where} | {budget} |"
        if r["status"] != "ok":
            lines.append(f"{head} | | | | | | | | | {r['status']}: {r['reason']} |")
            continue
        t = r["ttft_ms"]
        rng = r["speedup_range"]
        speed = (
            "1.00x"
            if r["reducer"] == "none"
            else f"{_fmt(r['speedup'], '.2f')}x"
            + (f" ({rng[0]:.2f}-{rng[1]:.2f})" if rng else "")
        )
        ideal = (
            "1.00x" if r["reducer"] == "none" else f"{r['flops_ideal_speedup']:.2f}x"
        )
        red = r["reducer_ms"]
        red_txt = (
            "-"
            if red is None
            else f"{red['median']:.2f} ± {red['iqr']:.2f} ({r['reducer_share']:.1%})"
        )
        s = r["syncs"]
        proxy = " (CPU proxy)" if s["method"] == "cpu_proxy" else ""
        sync_txt = f"{_fmt(s['reducer'], 'd', '-')} / {s['prefill']}{proxy}"
        lines.append(
            f"{head} {r['n_visual_in']} → {r['n_visual_out']} | "
            f"{t['median']:.1f} ± {t['iqr']:.1f} | {speed} | {ideal} | {red_txt} | "
            f"{sync_txt} | {r['peak_memory']['peak_bytes'] / 2**30:.2f} | "
            f"{r['kv_cache_bytes'] / 2**20:.1f} | ok |"
        )
    lines += [
        "",
        "Paper (A100-80G, FlashAttention-2, LLaVA-Video-7B, mean over six "
        "benchmarks): STTM 2.07x TTFT at 50 %, 3.02x at 30 %.",
        "",
    ]
    if not doc.get("complete"):
        lines.append("**Incomplete:** the run stopped before every case was written.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[64])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3])
    p.add_argument(
        "--reducers",
        nargs="+",
        default=None,
        help="default: every registered reducer except " + ", ".join(EXCLUDED),
    )
    p.add_argument("--stages", nargs="+", choices=["pre_llm", "in_llm"], default=None)
    p.add_argument("--layer", type=int, default=2, help="in-LLM layer K (paper: 2)")
    p.add_argument("--tiny", action="store_true", help="toy widths: CPU smoke test")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument(
        "--sdpa-backend",
        default="flash",
        choices=["flash", "efficient", "cudnn", "math", "any"],
        help="restrict sdpa to this kernel for every run; falls back to 'any' "
        "(recorded) when a probe shows it cannot run the model's attention",
    )
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--max-minutes",
        type=float,
        default=7.0,
        help="skip the remaining cases (recorded) once the next would pass this",
    )
    p.add_argument(
        "--guard-factor",
        type=float,
        default=1.5,
        help="a case is started only if guard-factor x the last case's time fits",
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    if args.stages is None:
        args.stages = ["pre_llm", "in_llm"]
    if args.layer < 1:
        p.error("--layer must be >= 1 (pre_llm covers K = 0)")
    if any(not 0.0 < b <= 1.0 for b in args.budgets):
        p.error("--budgets must lie in (0, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the suite; print the Markdown table and where the files went."""
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: no CUDA device; use --tiny --device cpu for a smoke test",
            file=sys.stderr,
        )
        return 2
    doc = run(args)
    print(markdown(doc))
    print(f"wrote {doc['files']['json']} and {doc['files']['markdown']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
