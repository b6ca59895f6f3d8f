"""Train the embedded ``tiny`` model on the synthetic benchmark (issue 8).

Training and evaluation see identical inputs: frames are decoded from the split's
mp4 files by the synthetic dataset's own ``decode`` (16 uniform frames), pixels,
prompt and model come from the adapter (:mod:`demo_model.trainer`). The loss is
cross-entropy on the answer letter (and the end token after it), plus the auxiliary
targets of :mod:`demo_model.grounding` computed from the training split.

The run is deterministic (seeded, fixed threads, deterministic kernels) and writes
``model.safetensors`` and ``training_log.json``, by default into the shipped
assets folder that the ``tiny`` adapter loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demo_model.composite import Pool, build_pool, composite_config, concat_pools
from demo_model.grounding import colour_labels, probe_labels, relevance
from demo_model.tasks import epoch_indices, task_names, task_weights
from demo_model.trainer import LETTERS, Trainer
from tokenred.adapter import AdapterConfig
from tokenred.adapters.tiny import TinyAdapter, assets_dir
from tokenred.builtin.synthetic import SyntheticConfig, SyntheticDataset
from tokenred.builtin.synthetic_render import MAX_QUESTIONS
from tokenred.data import Sample

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (all of it goes into the log)."""

    train_videos: int = 2000
    val_videos: int = 96
    steps: int = 1300
    batch: int = 8
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.3
    warmup: int = 20
    weight_decay: float = 0.01
    clip: float = 1.0
    end_weight: float = 0.2
    visual_weight: float = 1.0
    ground_weight: float = 2.0
    probe_weight: float = 1.0
    object_weight: float = 0.0
    probe_layer: int = 1
    tasks: str = ""
    task_weights: str = "direction=2,count=2"
    seed: int = 0
    eval_every: int = 100
    threads: int = 2
    init_from: str | None = None
    composite_videos: int = 0
    composite_k: str = "2,3,4,5"
    composite_fraction: float = 0.0
    composite_val_videos: int = 0
    data_root: str | None = None
    cache_dir: str = field(default_factory=lambda: str(default_cache()))
    out: str = field(default_factory=lambda: str(assets_dir()))

    def __post_init__(self) -> None:
        """Reject malformed task lists before any data is generated."""
        task_names(self.tasks)
        task_weights(self.task_weights)
        ks = composite_ks(self.composite_k)
        if not 0.0 <= self.composite_fraction <= 1.0:
            got = self.composite_fraction
            msg = f"composite_fraction must lie in [0, 1], got {got}"
            raise ValueError(msg)
        if self.composite_fraction > 0 and not (ks and self.composite_videos > 0):
            msg = "composite_fraction > 0 needs composite_videos > 0 and composite_k"
            raise ValueError(msg)


def composite_ks(text: str) -> list[int]:
    """Parse ``--composite-k`` (comma list of questions per video, each 2 to 5).

    Raises:
        ValueError: A malformed or out-of-range item (one line).
    """
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if not item.isdigit() or not 2 <= int(item) <= MAX_QUESTIONS:
            msg = f"composite_k: {item!r} must be an integer in 2..{MAX_QUESTIONS}"
            raise ValueError(msg)
        out.append(int(item))
    return out


def default_cache() -> Path:
    """Return the frame-cache directory (never committed)."""
    return Path.home() / ".cache" / "tokenred" / "train_tiny"


def cache_stem(cfg: TrainConfig, split: str, n: int) -> str:
    """Name of a split's cached arrays: generator config hash, split, count."""
    data = SyntheticConfig(split=split, num_videos=n, root=cfg.data_root)
    key = data.cache_key() if cfg.data_root is None else Path(cfg.data_root).name
    return f"{key}-{split}-{n}"


def split_frames(
    cfg: TrainConfig, split: str, n: int
) -> tuple[list[Sample], np.ndarray]:
    """Return the first ``n`` samples of ``split`` and their frames [n, T, S, S, 3].

    Videos are generated on demand by the synthetic dataset and decoded once; the
    uint8 frames are cached as ``.npy`` so later runs and epochs skip decoding.
    """
    data = SyntheticConfig(split=split, num_videos=n, root=cfg.data_root)
    dataset = SyntheticDataset(data)
    samples = dataset.load()
    path = Path(cfg.cache_dir) / f"{cache_stem(cfg, split, n)}.npy"
    if path.is_file():
        return samples, np.load(path, mmap_mode="r")
    frames = np.stack([dataset.decode_frames(s).frames for s in samples])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, frames)
    tmp.replace(path)
    return samples, frames


def composite_split(cfg: TrainConfig, split: str, k: int, n: int) -> Pool:
    """Return the :class:`~demo_model.composite.Pool` of ``n`` composite videos.

    Each video is decoded once (its ``k`` questions share the row); frames and
    colour labels are cached like :func:`split_frames`'s.
    """
    # An explicit data root gets one folder per K (a root holds one layout).
    root = None if cfg.data_root is None else str(Path(cfg.data_root) / f"k{k}")
    data = composite_config(split, k, n, root)
    dataset = SyntheticDataset(data)
    samples = dataset.load()
    key = data.cache_key() if root is None else f"{Path(root).parent.name}-k{k}"
    stem = Path(cfg.cache_dir) / f"{key}-{split}-{n}"
    fpath, lpath = (
        stem.with_name(stem.name + ".npy"),
        stem.with_name(stem.name + "-colours.npy"),
    )
    first = dataset.decode_frames(samples[0])
    if fpath.is_file():
        frames = np.load(fpath, mmap_mode="r")
    else:
        frames = np.stack(
            [dataset.decode_frames(s).frames for s in samples[::k]]
        )  # [V, T, S, S, 3]
        fpath.parent.mkdir(parents=True, exist_ok=True)
        tmp = fpath.with_suffix(".tmp.npy")
        np.save(tmp, frames)
        tmp.replace(fpath)
    if not lpath.is_file():
        np.save(lpath, colour_labels(np.asarray(frames)))
    labels = np.load(lpath)  # [V, T, g, g]
    return build_pool(data, samples, frames, labels, first.indices)


def composite_pools(cfg: TrainConfig) -> tuple[Pool | None, Pool | None]:
    """The composite training pool (every K of ``composite_k``) and held-out pool.

    The held-out pool has ``composite_val_videos`` five-question ``val`` videos.
    """
    train_pool = None
    if cfg.composite_videos > 0 and composite_ks(cfg.composite_k):
        train_pool = concat_pools(
            [
                composite_split(cfg, "train", k, cfg.composite_videos)
                for k in composite_ks(cfg.composite_k)
            ]
        )
    val_pool = None
    if cfg.composite_val_videos > 0:
        val_pool = composite_split(cfg, "val", MAX_QUESTIONS, cfg.composite_val_videos)
    return train_pool, val_pool


def init_adapter(cfg: TrainConfig, work: Path) -> TinyAdapter:
    """Load the tiny adapter with a seeded random init of the committed config."""
    work.mkdir(parents=True, exist_ok=True)
    for f in assets_dir().iterdir():
        if f.suffix == ".json":
            shutil.copy(f, work / f.name)
    adapter = TinyAdapter(AdapterConfig(path=str(work), seed=cfg.seed))
    adapter.load()
    return adapter


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cos)


@contextlib.contextmanager
def deterministic(cfg: TrainConfig) -> Iterator[None]:
    """Seed torch and fix threads for the run; restore the global state after it."""
    threads = torch.get_num_threads()
    strict = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(strict)


def train(
    cfg: TrainConfig,
    progress: Callable[[int], Any] | None = None,
    echo: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Train from a seeded init, write weights and the JSON log to ``cfg.out``.

    Args:
        cfg: The run's hyper-parameters.
        progress: Optional factory of a progress bar (``tqdm``-like) given the
            number of steps; the library stays free of console output.
        echo: Where to write one-line progress reports.

    Returns:
        The training log (also written to ``out/training_log.json``).
    """
    with deterministic(cfg):
        return _train(cfg, progress, echo)


def _train(
    cfg: TrainConfig,
    progress: Callable[[int], Any] | None,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    start = time.perf_counter()
    train_s, train_f = split_frames(cfg, "train", cfg.train_videos)
    keep = epoch_indices(cfg.tasks, cfg.task_weights, train_s)
    val_s, val_f = split_frames(cfg, "val", cfg.val_videos)
    lpath = (
        Path(cfg.cache_dir) / f"{cache_stem(cfg, 'train', len(train_s))}-colours.npy"
    )
    if not lpath.is_file():
        np.save(lpath, colour_labels(train_f))
    labels = np.load(lpath)  # [n, T, g, g]
    single = Pool(
        train_s,
        train_f,
        np.arange(len(train_s), dtype=np.int64),
        labels,
        relevance(labels, train_s),  # [n, T, g, g]
        probe_labels(labels, train_s),  # [n, T, g, g, 3]
    )
    comp, comp_val = composite_pools(cfg)
    n_comp = round(cfg.batch * cfg.composite_fraction) if comp is not None else 0
    data_s = time.perf_counter() - start
    adapter = init_adapter(cfg, Path(cfg.cache_dir) / "init")
    trainer = Trainer(adapter, cfg.probe_layer)
    model = trainer.model.train()
    init_sha = init_digest(cfg)  # before ``out`` may overwrite the same file
    if cfg.init_from:
        load_weights(model, Path(cfg.init_from))
    params = [*model.parameters(), *trainer.probe.parameters()]
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    rng = np.random.default_rng(cfg.seed)
    order = np.empty(0, dtype=np.int64)
    corder = np.empty(0, dtype=np.int64)
    history: list[dict[str, float]] = []
    evals: list[dict[str, Any]] = []
    bar = progress(cfg.steps) if progress is not None else None
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        n_single = cfg.batch - n_comp
        if len(order) < n_single:
            order = np.concatenate([order, rng.permutation(keep)])
        idx, order = np.sort(order[:n_single]), order[n_single:]
        parts = [(single, idx)]
        if comp is not None and n_comp > 0:
            if len(corder) < n_comp:
                corder = np.concatenate([corder, rng.permutation(len(comp.samples))])
            cidx, corder = np.sort(corder[:n_comp]), corder[n_comp:]
            parts.append((comp, cidx))
        samples = [pool.samples[i] for pool, ix in parts for i in ix]
        frames = np.concatenate([pool.question_frames(ix) for pool, ix in parts])
        letters = [str(s.answer) for s in samples]
        prompts = [s.prompt for s in samples]
        ground = cfg.ground_weight > 0
        ans, end = trainer.logits(frames, prompts, letters, ground)
        gold = torch.tensor([LETTERS.index(a) for a in letters])
        ce = torch.nn.functional.cross_entropy
        la = ce(ans, torch.tensor(trainer.letter_ids)[gold])
        le = ce(end, torch.full_like(gold, trainer.end_id))
        loss = la + cfg.end_weight * le
        lv = trainer.colour_loss(
            np.concatenate([pool.labels[pool.video[ix]] for pool, ix in parts])
        )
        lg = (
            trainer.grounding_loss(
                np.concatenate([pool.cells[ix] for pool, ix in parts]),
                [s.question for s in samples],
            )
            if ground
            else torch.zeros(())
        )
        lp = (
            trainer.probe_loss(np.concatenate([pool.probes[ix] for pool, ix in parts]))
            if cfg.probe_weight > 0
            else torch.zeros(())
        )
        loss = loss + cfg.visual_weight * lv + cfg.ground_weight * lg
        loss = loss + cfg.probe_weight * lp
        if cfg.object_weight > 0 and ground:
            lo = trainer.object_loss([s.question for s in samples])
            loss = loss + cfg.object_weight * lo
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        history.append(
            {
                "step": step + 1,
                "loss": float(la.detach()),
                "visual_loss": float(lv.detach()),
                "ground_loss": float(lg.detach()),
                "probe_loss": float(lp.detach()),
                "lr": lr_at(cfg, step),
            }
        )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(la.detach()):.3f}")
        last = step + 1 == cfg.steps
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or last):
            res = trainer.evaluate(val_s, val_f)
            if comp_val is not None:
                every = np.arange(len(comp_val.samples))
                res["composite"] = trainer.evaluate(
                    comp_val.samples, comp_val.question_frames(every)
                )
            res |= {"step": step + 1, "minutes": (time.perf_counter() - t0) / 60}
            for key in ("loss", "visual_loss", "ground_loss", "probe_loss"):
                recent = [h[key] for h in history[-20:]]
                res[f"train_{key}"] = float(np.mean(recent))
            evals.append(res)
            echo(json.dumps(res, sort_keys=True))
    if bar is not None:
        bar.close()
    out = Path(cfg.out)
    save_weights(model, out)
    result = {
        "config": asdict(cfg),
        "data_seconds": data_s,
        "train_seconds": time.perf_counter() - t0,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "init_sha256": init_sha,
        "history": history,
        "evals": evals,
    }
    (out / "training_log.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def weights_file(path: Path) -> Path:
    """``model.safetensors`` itself, or the one in the folder ``path``."""
    return path / "model.safetensors" if path.is_dir() else path


def init_digest(cfg: TrainConfig) -> str | None:
    """SHA-256 of the ``--init-from`` weights (None for a seeded random init).

    Logged so a second stage names exactly which first-stage weights it started
    from.
    """
    if not cfg.init_from:
        return None
    return hashlib.sha256(weights_file(Path(cfg.init_from)).read_bytes()).hexdigest()


def load_weights(model: Any, path: Path) -> None:
    """Start from trained weights (``model.safetensors`` or a folder holding it).

    The second training stage starts from the first stage's weights (the trainer's
    probe starts fresh: it is never saved).
    """
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(weights_file(path))), strict=True)


def save_weights(model: Any, out: Path) -> Path:
    """Write ``model.safetensors`` (float32) next to the committed config."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path = out / "model.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    return path
