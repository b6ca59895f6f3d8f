"""Train the embedded ``tiny`` model on the synthetic benchmark (issue 8).

Training and evaluation see identical inputs: frames are decoded from the split's
mp4 files with :func:`tokenred.video.decode_video` (16 uniform frames), pixels come
from the adapter's own ``_pixels``, the prompt from the adapter's chat template, and
the model is the adapter's ``LlavaOnevisionForConditionalGeneration``. The loss is
cross-entropy on the answer letter (and the end token after it), plus an auxiliary
per-visual-token colour loss computed from the training frames.

Each step encodes ``batch`` videos, runs the LLM over the shared prefix (system
prompt + visual tokens) and then over each question from that prefix's KV cache;
under causal attention this equals the full-sequence forward (checked against the
adapter's prefill logits in the tests).
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
from tokenred.builtin.synthetic_render import COLORS, OPTIONS, SHAPES
from tokenred.data import Sample
from tokenred.grounding import (
    IGNORE,
    HeadTargets,
    attention_loss,
    colour_labels,
    probe_labels,
    question_span,
    relevance,
    video_targets,
)
from tokenred.video import decode_video

log = logging.getLogger(__name__)

LETTERS = "ABCD"


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
    probe_layer: int = 1
    tasks: str = ""
    task_weights: str = "direction=2,count=2"
    seed: int = 0
    eval_every: int = 100
    threads: int = 2
    data_root: str | None = None
    cache_dir: str = field(default_factory=lambda: str(default_cache()))
    out: str = field(default_factory=lambda: str(assets_dir()))

    def __post_init__(self) -> None:
        """Reject malformed task lists before any data is generated."""
        task_names(self.tasks)
        task_weights(self.task_weights)


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


def init_adapter(cfg: TrainConfig, work: Path) -> TinyAdapter:
    """Load the tiny adapter with a seeded random init of the committed config."""
    work.mkdir(parents=True, exist_ok=True)
    for f in assets_dir().iterdir():
        if f.suffix == ".json":
            shutil.copy(f, work / f.name)
    adapter = TinyAdapter(AdapterConfig(path=str(work), seed=cfg.seed))
    adapter.load()
    return adapter


class Trainer:
    """Batched training/evaluation forward of the tiny model through its adapter."""

    def __init__(self, adapter: TinyAdapter, probe_layer: int = 1) -> None:
        """Keep the adapter's model, tokenizer ids and the fixed prompt prefix.

        ``probe_layer`` indexes the LLM's hidden states (0 = its input) at which the
        visual tokens get the position and shape probe (:meth:`probe_loss`); the
        probe is a linear layer owned by the trainer, never saved.
        """
        self.adapter = adapter
        self.model: Any = adapter._model
        tok = adapter._tokenizer
        self.letter_ids = [int(tok.convert_tokens_to_ids(c)) for c in LETTERS]
        self.end_id = int(tok.convert_tokens_to_ids("<|im_end|>"))
        self.pad_id = int(tok.pad_token_id)
        self.colour_ids = [int(tok.convert_tokens_to_ids(w)) for w in ("none", *COLORS)]
        self.visual_hidden: Tensor | None = None
        self.probe_layer = probe_layer
        self.probe_hidden: Tensor | None = None
        vision = self.model.config.vision_config
        grid = math.ceil(vision.image_size // vision.patch_size / 2)  # pooled side
        width = int(self.model.config.text_config.hidden_size)
        self.probe = torch.nn.Linear(width, 2 * grid + len(SHAPES))
        self.grid = grid
        self.answer_attn: list[Tensor] = []
        self.suffixes: list[list[int]] = []
        self.prefix_len = 0
        self.attn = str(self.model.config.text_config._attn_implementation)
        self.before, _ = adapter._prompt_ids("")

    def pixels(self, frames: np.ndarray) -> Tensor:
        """``[B, T, H, W, 3]`` uint8 -> ``[B, T, 3, S, S]`` via the adapter."""
        per = [self.adapter._pixels(np.array(f), None) for f in frames]
        return torch.cat([p["pixel_values_videos"] for p in per])

    def logits(
        self,
        frames: np.ndarray,
        prompts: Sequence[str],
        letters: Sequence[str],
        ground: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Return logits at the answer and at the token after it, ``[B, V]`` each.

        ``prompts[b]`` is the question prompt of video ``b`` and ``letters[b]`` its
        teacher-forced answer (only the second logits depend on it). With
        ``ground``, the question pass runs eager attention and keeps the answer
        position's attention rows of every layer in ``self.answer_attn``
        (``[B, H, P + Ls]`` each) for the grounding loss.
        """
        model, lm = self.model, self.model.model.language_model
        cfg = model.config
        feats = model.model.get_video_features(
            pixel_values_videos=self.pixels(frames),
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        ).pooler_output  # [B, T*h*w + 1 (newline), D]
        b = len(prompts)
        embed = model.get_input_embeddings()
        before = embed(torch.tensor([self.before])).expand(b, -1, -1)
        prefix = torch.cat([before, feats], dim=1)  # [B, P, D]
        p = prefix.shape[1]
        out = lm(
            inputs_embeds=prefix,
            position_ids=torch.arange(p).unsqueeze(0).expand(b, -1),
            use_cache=True,
            output_hidden_states=True,
        )
        rows_v = slice(len(self.before), p - 1)  # visual rows, newline excluded
        self.visual_hidden = out.last_hidden_state[:, rows_v]  # [B, N, D]
        self.probe_hidden = out.hidden_states[self.probe_layer][:, rows_v]  # [B, N, D]
        suffixes = [
            [*self.adapter._prompt_ids(q)[1], self.letter_ids[LETTERS.index(a)]]
            for q, a in zip(prompts, letters)
        ]
        ls = max(len(s) for s in suffixes)
        # Right padding needs no mask: causal rows never see later pads.
        ids = torch.tensor([s + [self.pad_id] * (ls - len(s)) for s in suffixes])
        self.suffixes, self.prefix_len = suffixes, p
        if ground:
            lm.set_attn_implementation("eager")
        try:
            res = lm(
                inputs_embeds=embed(ids),
                position_ids=(p + torch.arange(ls)).unsqueeze(0).expand(b, -1),
                past_key_values=out.past_key_values,
                use_cache=True,
                output_attentions=ground,
            )
        finally:
            if ground:
                lm.set_attn_implementation(self.attn)
        hid = res.last_hidden_state  # [B, Ls, D]
        rows = torch.arange(b)
        last = torch.tensor([len(s) - 2 for s in suffixes])  # predicts the letter
        if ground:
            # Each layer's [B, H, Ls, P + Ls] -> the answer position's rows [B, H, K]
            self.answer_attn = [a[rows, :, last] for a in res.attentions]
        ans = model.lm_head(hid[rows, last]).float()
        end = model.lm_head(hid[rows, last + 1]).float()
        return ans, end

    def colour_loss(self, labels: np.ndarray) -> Tensor:
        """Cross-entropy of the visual rows' final states against colour words.

        ``labels``: ``[B, T, g, g]`` from :func:`colour_labels`; the last
        :meth:`logits` call's visual states are read through the LM head rows of
        ``none`` and the colour words.
        """
        if self.visual_hidden is None:
            msg = "colour_loss needs a logits() call first"
            raise RuntimeError(msg)
        rows = self.model.lm_head.weight[self.colour_ids]  # [1 + P, D]
        vis = (self.visual_hidden @ rows.T).float()  # [B, N, 1 + P]
        target = torch.from_numpy(labels.reshape(len(labels), -1)).long()  # [B, N]
        return torch.nn.functional.cross_entropy(vis.flatten(0, 1), target.flatten())

    def probe_loss(self, targets: np.ndarray) -> Tensor:
        """Cross-entropy of the linear probe on the visual states of ``probe_layer``.

        ``targets``: ``[B, T, g, g, 3]`` (row, column, shape) from
        :func:`tokenred.grounding.probe_labels`; the three losses are summed.
        """
        if self.probe_hidden is None:
            msg = "probe_loss needs a logits() call first"
            raise RuntimeError(msg)
        g = self.grid
        out: Tensor = self.probe(self.probe_hidden).float()  # [B, N, 2g + S]
        tgt = torch.from_numpy(targets.reshape(len(targets), -1, 3))  # [B, N, 3]
        parts = (out[..., :g], out[..., g : 2 * g], out[..., 2 * g :])
        ce = torch.nn.functional.cross_entropy
        total: Tensor = out.new_zeros(())
        for k, logits in enumerate(parts):
            label = tgt[..., k].flatten()
            if bool((label != IGNORE).any()):
                total = total + ce(logits.flatten(0, 1), label, ignore_index=IGNORE)
        return total

    def grounding_loss(
        self,
        cells: np.ndarray,
        questions: Sequence[str],
        heads: HeadTargets | None = None,
    ) -> Tensor:
        """Grounding loss of the last ``logits(..., ground=True)`` call.

        ``cells``: ``[B, T, g, g]`` relevant visual cells of each sample;
        ``questions``: the question sentences (their tokens are the layer-0 target).
        """
        if not self.answer_attn:
            msg = "grounding_loss needs a logits(..., ground=True) call first"
            raise RuntimeError(msg)
        heads = heads or HeadTargets()
        p = self.prefix_len
        # Layer 0: the answer position reads the question's words.
        qa = self.answer_attn[heads.question_layer][:, heads.question_head]  # [B, K]
        target = torch.zeros_like(qa)
        for i, (suffix, question) in enumerate(zip(self.suffixes, questions)):
            lo, hi = question_span(suffix, self.adapter._tokens(question))
            target[i, p + lo : p + hi] = 1.0 / (hi - lo)
        lq = attention_loss(qa[:, None], target[:, None], 0)
        # Layer 1: the video heads read the cells the question is about.
        dist, index = video_targets(cells, heads)  # [B, H', N], [H']
        va = self.answer_attn[heads.video_layer][:, index]  # [B, H', K]
        lv = attention_loss(va, dist, len(self.before))
        return lq + lv

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
                ans, _ = self.logits(
                    frames[i : i + batch], [s.prompt for s in chunk], letters
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
    keep = epoch_indices(cfg.tasks, cfg.task_weights, train_s)
    val_s, val_f = split_frames(cfg, "val", cfg.val_videos)
    lpath = (
        Path(cfg.cache_dir) / f"{cache_stem(cfg, 'train', len(train_s))}-colours.npy"
    )
    if not lpath.is_file():
        np.save(lpath, colour_labels(train_f))
    labels = np.load(lpath)  # [n, T, g, g]
    cells = relevance(labels, train_s)  # [n, T, g, g]
    probes = probe_labels(labels, train_s)  # [n, T, g, g, 3]
    data_s = time.perf_counter() - start
    adapter = init_adapter(cfg, Path(cfg.cache_dir) / "init")
    trainer = Trainer(adapter, cfg.probe_layer)
    model = trainer.model.train()
    params = [*model.parameters(), *trainer.probe.parameters()]
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
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
        letters = [str(train_s[i].answer) for i in idx]
        prompts = [train_s[i].prompt for i in idx]
        ground = cfg.ground_weight > 0
        ans, end = trainer.logits(train_f[idx], prompts, letters, ground)
        gold = torch.tensor([LETTERS.index(a) for a in letters])
        ce = torch.nn.functional.cross_entropy
        la = ce(ans, torch.tensor(trainer.letter_ids)[gold])
        le = ce(end, torch.full_like(gold, trainer.end_id))
        loss = la + cfg.end_weight * le
        lv = trainer.colour_loss(labels[idx])
        lg = (
            trainer.grounding_loss(cells[idx], [train_s[i].question for i in idx])
            if ground
            else torch.zeros(())
        )
        lp = (
            trainer.probe_loss(probes[idx]) if cfg.probe_weight > 0 else torch.zeros(())
        )
        loss = loss + cfg.visual_weight * lv + cfg.ground_weight * lg
        loss = loss + cfg.probe_weight * lp
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
        "history": history,
        "evals": evals,
    }
    (out / "training_log.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def task_names(tasks: str, option: str = "tasks") -> set[str]:
    """Parse a comma list of synthetic task names ("" = none listed).

    Raises:
        ValueError: A name that is not a synthetic task (one line, listing them).
    """
    names = {t.strip() for t in tasks.split(",") if t.strip()}
    unknown = sorted(names - set(OPTIONS))
    if unknown:
        msg = (
            f"{option}: unknown task {unknown[0]!r}; "
            f"the synthetic tasks are {', '.join(OPTIONS)}"
        )
        raise ValueError(msg)
    return names


def task_weights(weights: str) -> dict[str, int]:
    """Parse ``task=k`` comma items (integer ``k >= 1``) into a weight per task.

    Raises:
        ValueError: A malformed item or an unknown task name (one line).
    """
    repeat: dict[str, int] = {}
    for item in (w for w in weights.split(",") if w.strip()):
        name, _, k = (part.strip() for part in item.partition("="))
        if not name or not k.isdigit() or int(k) < 1:
            msg = f"task_weights: {item!r} must be task=k with an integer k >= 1"
            raise ValueError(msg)
        task_names(name, "task_weights")  # rejects an unknown task
        repeat[name] = int(k)
    return repeat


def epoch_indices(tasks: str, weights: str, samples: list[Sample]) -> np.ndarray:
    """Training-sample indices of one epoch, each repeated by its task's weight.

    Args:
        tasks: Comma list of the task names to train on (all if "").
        weights: Comma list of ``task=k`` (:func:`task_weights`); a task not listed
            has weight 1. A sample of weight ``k`` is drawn ``k`` times per epoch, so
            the slow-to-learn direction and count questions get more of the updates.
        samples: The training split.
    """
    wanted = task_names(tasks)
    repeat = task_weights(weights)
    idx = [
        i
        for i, s in enumerate(samples)
        for _ in range(repeat.get(str(s.meta["task"]), 1))
        if not wanted or s.meta["task"] in wanted
    ]
    return np.array(idx, dtype=np.int64)


def save_weights(model: Any, out: Path) -> Path:
    """Write ``model.safetensors`` (float32) next to the committed config."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    path = out / "model.safetensors"
    save_file(state, str(path), metadata={"format": "pt"})
    return path
