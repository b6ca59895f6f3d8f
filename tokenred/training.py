"""Train the embedded ``tiny`` model on the synthetic benchmark (issue 8).

Training and evaluation see identical inputs: frames are decoded from the split's
mp4 files with :func:`tokenred.video.decode_video` (16 uniform frames), pixels come
from the adapter's own ``_pixels``, the prompt from the adapter's chat template, and
the model is the adapter's ``LlavaOnevisionForConditionalGeneration``. The loss is
cross-entropy on the answer letter (and the end token after it).

Each step encodes ``batch`` videos once, runs the LLM over the shared prefix
(system prompt + visual tokens) once, and answers ``variants`` prompts per video
from copies of that prefix's KV cache: the original question and random
permutations of its options. Under causal attention this is exactly the
full-sequence forward, and the permutations force the model to read the options
instead of memorising letter positions, at a fraction of the cost of a full
forward per prompt.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tokenred.adapter import AdapterConfig
from tokenred.adapters.tiny import TinyAdapter, assets_dir
from tokenred.builtin.synthetic import SyntheticConfig, SyntheticDataset, sixteen_frames
from tokenred.builtin.synthetic_render import COLORS
from tokenred.data import Sample
from tokenred.datasets._common import build_prompt
from tokenred.video import decode_video

log = logging.getLogger(__name__)

LETTERS = "ABCD"


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (all of it goes into the log)."""

    train_videos: int = 2000
    val_videos: int = 96
    steps: int = 900
    batch: int = 8
    variants: int = 4
    lr: float = 3e-3
    min_lr_ratio: float = 0.05
    warmup: int = 20
    weight_decay: float = 0.05
    clip: float = 1.0
    end_weight: float = 0.2
    option_weight: float = 1.0
    visual_weight: float = 1.0
    tasks: str = ""
    coarse_steps: int = 500
    seed: int = 0
    eval_every: int = 50
    threads: int = 2
    data_root: str | None = None
    cache_dir: str = field(default_factory=lambda: str(default_cache()))
    out: str = field(default_factory=lambda: str(assets_dir()))


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
    samples = SyntheticDataset(data).load()
    path = Path(cfg.cache_dir) / f"{cache_stem(cfg, split, n)}.npy"
    if path.is_file():
        return samples, np.load(path, mmap_mode="r")
    sampling = sixteen_frames()
    frames = np.stack([decode_video(s.video, sampling).frames for s in samples])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, frames)
    tmp.replace(path)
    return samples, frames


def colour_labels(frames: np.ndarray, grid: int = 8) -> np.ndarray:
    """Label each cell of a ``grid x grid`` split of every frame with its object colour.

    ``[n, T, S, S, 3]`` uint8 -> ``[n, T, grid, grid]`` uint8: 0 = no saturated
    object, ``1 + i`` = the ``i``-th synthetic colour. Derived from the decoded pixels
    (saturated pixels snapped to the nearest palette colour), so it needs no access
    to the generator's scene description.
    """
    palette = np.array(list(COLORS.values()), np.int32)  # [P, 3]
    n, t, size = frames.shape[0], frames.shape[1], frames.shape[2]
    cell = size // grid
    out = np.zeros((n, t, grid, grid), np.uint8)
    for i in range(n):
        px = np.asarray(frames[i], np.int32)  # [T, S, S, 3]
        sat = px.max(-1) - px.min(-1) > 80  # [T, S, S]
        dist = ((px[..., None, :] - palette) ** 2).sum(-1)  # [T, S, S, P]
        hot = np.eye(len(palette), dtype=np.int32)[dist.argmin(-1)] * sat[..., None]
        # [T, S, S, P] -> [T, g, cell, g, cell, P] -> per-cell counts [T, g, g, P]
        counts = hot[:, : grid * cell, : grid * cell].reshape(
            t, grid, cell, grid, cell, -1
        )
        counts = counts.sum((2, 4))
        label = counts.argmax(-1) + 1
        out[i] = np.where(counts.max(-1) >= cell, label, 0)
    return out


def coarsen(feats: Tensor, frames: int) -> Tensor:
    """Average-pool the visual tokens 2x per side (curriculum), keep the newline.

    ``[B, T*h*w + 1, D]`` -> ``[B, T*(h/2)*(w/2) + 1, D]``: four times fewer tokens
    for the LLM to search while it learns to look up the video.
    """
    b, n, d = feats.shape
    side = math.isqrt((n - 1) // frames)
    grid = feats[:, :-1].reshape(b * frames, side, side, d).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.avg_pool2d(grid, 2)  # [B*T, D, h/2, w/2]
    # [B*T, D, h/2, w/2] -> [B, T*(h/2)*(w/2), D]
    flat = pooled.permute(0, 2, 3, 1).reshape(b, -1, d)
    return torch.cat([flat, feats[:, -1:]], dim=1)


def init_adapter(cfg: TrainConfig, work: Path) -> TinyAdapter:
    """Load the tiny adapter with a seeded random init of the committed config."""
    work.mkdir(parents=True, exist_ok=True)
    for f in assets_dir().iterdir():
        if f.suffix == ".json":
            shutil.copy(f, work / f.name)
    adapter = TinyAdapter(AdapterConfig(path=str(work), seed=cfg.seed))
    adapter.load()
    return adapter


def prompt_variants(
    sample: Sample, k: int, rng: np.random.Generator
) -> list[tuple[str, str]]:
    """Return ``k`` (prompt, answer letter) pairs: the original, then permutations."""
    if sample.answer is None:
        msg = f"training sample {sample.id} has no answer"
        raise ValueError(msg)
    gold = sample.options[LETTERS.index(sample.answer)]
    out = [(sample.prompt, sample.answer)]
    for _ in range(k - 1):
        opts = [sample.options[i] for i in rng.permutation(len(sample.options))]
        out.append((build_prompt(sample.question, opts), LETTERS[opts.index(gold)]))
    return out


class Trainer:
    """Batched training/evaluation forward of the tiny model through its adapter."""

    def __init__(self, adapter: TinyAdapter) -> None:
        """Keep the adapter's model, tokenizer ids and the fixed prompt prefix."""
        self.adapter = adapter
        self.model: Any = adapter._model
        tok = adapter._tokenizer
        self.letter_ids = [int(tok.convert_tokens_to_ids(c)) for c in LETTERS]
        self.end_id = int(tok.convert_tokens_to_ids("<|im_end|>"))
        self.pad_id = int(tok.pad_token_id)
        self.yes_no = [int(tok.convert_tokens_to_ids(w)) for w in ("no", "yes")]
        self.dot_id = int(tok.convert_tokens_to_ids("."))
        self.cue_id = int(tok.convert_tokens_to_ids("The"))
        self.colour_ids = [int(tok.convert_tokens_to_ids(w)) for w in ("none", *COLORS)]
        self.visual_hidden: Tensor | None = None
        self.before, _ = adapter._prompt_ids("")

    def pixels(self, frames: np.ndarray) -> Tensor:
        """``[B, T, H, W, 3]`` uint8 -> ``[B, T, 3, S, S]`` via the adapter."""
        per = [self.adapter._pixels(np.array(f), None) for f in frames]
        return torch.cat([p["pixel_values_videos"] for p in per])

    def option_ends(self, ids: Sequence[int]) -> list[int]:
        """Positions of the last token of each option's text in a prompt suffix.

        Options are ``"<letter> . <text>"`` runs; the answer cue (``The best
        answer is:``) follows the last one.
        """
        starts = [
            next(j for j in range(len(ids) - 1) if ids[j] == c and ids[j + 1] == d)
            for c, d in ((self.letter_ids[i], self.dot_id) for i in range(4))
        ]
        cue = max(j for j, t in enumerate(ids) if t == self.cue_id)
        return [s - 1 for s in starts[1:]] + [cue - 1]

    def logits(
        self,
        frames: np.ndarray,
        prompts: Sequence[Sequence[str]],
        letters: list[str],
        coarse: bool = False,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return logits at the answer, the token after it, and the option ends.

        ``prompts[b]`` are the K prompts of video ``b``; ``letters`` the B*K
        teacher-forced answers (only the second logits depend on them). Shapes:
        ``[B*K, V]``, ``[B*K, V]`` and ``[B*K, 4, V]``.
        """
        model, lm = self.model, self.model.model.language_model
        cfg = model.config
        feats = model.model.get_video_features(
            pixel_values_videos=self.pixels(frames),
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        ).pooler_output  # [B, T*h*w + 1 (newline), D]
        if coarse:
            feats = coarsen(feats, frames.shape[1])
        b, k = len(prompts), len(prompts[0])
        embed = model.get_input_embeddings()
        before = embed(torch.tensor([self.before])).expand(b, -1, -1)
        prefix = torch.cat([before, feats], dim=1)  # [B, P, D]
        p = prefix.shape[1]
        out = lm(
            inputs_embeds=prefix,
            position_ids=torch.arange(p).unsqueeze(0).expand(b, -1),
            use_cache=True,
        )
        cache = out.past_key_values
        # Final hidden states of the visual rows (newline excluded): [B, N, D]
        self.visual_hidden = out.last_hidden_state[:, len(self.before) : p - 1]
        cache.batch_repeat_interleave(k)  # [B, ...] -> [B*K, ...]
        suffixes = [
            [*self.adapter._prompt_ids(q)[1], self.letter_ids[LETTERS.index(a)]]
            for q, a in zip((q for row in prompts for q in row), letters)
        ]
        ls = max(len(s) for s in suffixes)
        # Right padding needs no mask: causal rows never see later pads.
        ids = torch.tensor([s + [self.pad_id] * (ls - len(s)) for s in suffixes])
        hid = lm(
            inputs_embeds=embed(ids),
            position_ids=(p + torch.arange(ls)).unsqueeze(0).expand(b * k, -1),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state  # [B*K, Ls, D]
        rows = torch.arange(b * k)
        last = torch.tensor([len(s) - 2 for s in suffixes])  # predicts the letter
        ans = model.lm_head(hid[rows, last]).float()
        end = model.lm_head(hid[rows, last + 1]).float()
        ends = torch.tensor([self.option_ends(s) for s in suffixes])  # [B*K, 4]
        opt = model.lm_head(hid[rows[:, None], ends]).float()  # [B*K, 4, V]
        return ans, end, opt

    def evaluate(
        self, samples: list[Sample], frames: np.ndarray, batch: int = 16
    ) -> dict[str, Any]:
        """Greedy accuracy (argmax over the whole vocabulary) overall and per task."""
        self.model.eval()
        hits: dict[str, list[bool]] = {}
        with torch.no_grad():
            for i in range(0, len(samples), batch):
                chunk = samples[i : i + batch]
                letters = [str(s.answer) for s in chunk]
                ans, _, _ = self.logits(
                    frames[i : i + batch], [[s.prompt] for s in chunk], letters
                )
                pred = ans.argmax(-1).tolist()
                for s, a, pr in zip(chunk, letters, pred):
                    ok = pr == self.letter_ids[LETTERS.index(a)]
                    hits.setdefault(str(s.meta["task"]), []).append(ok)
        self.model.train()
        every = [h for v in hits.values() for h in v]
        per = {t: float(np.mean(v)) for t, v in sorted(hits.items())}
        return {"accuracy": float(np.mean(every)), "per_task": per, "n": len(every)}


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
    keep = _task_filter(cfg.tasks, train_s)
    val_s, val_f = split_frames(cfg, "val", cfg.val_videos)
    labels = None
    if cfg.visual_weight > 0:
        lpath = (
            Path(cfg.cache_dir)
            / f"{cache_stem(cfg, 'train', len(train_s))}-colours.npy"
        )
        if not lpath.is_file():
            np.save(lpath, colour_labels(train_f))
        labels = np.load(lpath)
    data_s = time.perf_counter() - start
    adapter = init_adapter(cfg, Path(cfg.cache_dir) / "init")
    trainer = Trainer(adapter)
    model = trainer.model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    rng = np.random.default_rng(cfg.seed)
    order = np.empty(0, dtype=np.int64)
    history: list[dict[str, float]] = []
    evals: list[dict[str, Any]] = []
    bar = progress(cfg.steps) if progress is not None else None
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if len(order) < cfg.batch:
            order = np.concatenate([order, rng.permutation(keep)])
        idx, order = np.sort(order[: cfg.batch]), order[cfg.batch :]
        pairs = [prompt_variants(train_s[i], cfg.variants, rng) for i in idx]
        letters = [a for row in pairs for _, a in row]
        prompts = [[q for q, _ in row] for row in pairs]
        coarse = step < cfg.coarse_steps
        ans, end, per_opt = trainer.logits(train_f[idx], prompts, letters, coarse)
        gold = torch.tensor([LETTERS.index(a) for a in letters])
        ce = torch.nn.functional.cross_entropy
        la = ce(ans, torch.tensor(trainer.letter_ids)[gold])
        le = ce(end, torch.full_like(gold, trainer.end_id))
        # Per-option "is this the answer?" ([B*K, 4] -> yes/no token targets).
        hit = (torch.arange(4)[None, :] == gold[:, None]).long()
        lo = ce(per_opt.flatten(0, 1), torch.tensor(trainer.yes_no)[hit.flatten()])
        loss = la + cfg.end_weight * le + cfg.option_weight * lo
        lv = torch.zeros(())
        if labels is not None and trainer.visual_hidden is not None:
            rows = model.lm_head.weight[trainer.colour_ids]  # [1 + P, D]
            vis = (trainer.visual_hidden @ rows.T).float()  # [B, N, 1 + P]
            lab = labels[idx]  # [B, T, g, g]
            if coarse:  # a colour present in a 2x2 block labels the pooled token
                g = lab.shape[-1] // 2
                lab = lab.reshape(*lab.shape[:2], g, 2, g, 2).max((3, 5))
            target = torch.from_numpy(lab.reshape(len(idx), -1)).long()
            lv = ce(vis.flatten(0, 1), target.flatten())
            loss = loss + cfg.visual_weight * lv
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        history.append(
            {
                "step": step + 1,
                "loss": float(la.detach()),
                "option_loss": float(lo.detach()),
                "visual_loss": float(lv.detach()),
                "lr": lr_at(cfg, step),
            }
        )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(la.detach()):.3f}")
        last = step + 1 == cfg.steps
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or last):
            res = trainer.evaluate(val_s, val_f)
            res |= {"step": step + 1, "minutes": (time.perf_counter() - t0) / 60}
            for key in ("loss", "option_loss", "visual_loss"):
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
        "history": history,
        "evals": evals,
    }
    (out / "training_log.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _task_filter(tasks: str, samples: list[Sample]) -> np.ndarray:
    """Indices of the training samples whose task is in the comma list (all if "")."""
    wanted = {t for t in tasks.split(",") if t}
    idx = [i for i, s in enumerate(samples) if not wanted or s.meta["task"] in wanted]
    return np.array(idx, dtype=np.int64)


def save_weights(model: Any, out: Path) -> Path:
    """Write ``model.safetensors`` (float32) next to the committed config."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path = out / "model.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    return path
