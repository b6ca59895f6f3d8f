"""Batched forward and losses of the tiny model, driven through its adapter.

The trainer reads the model, tokenizer, chat prompt and pixel preprocessing from
the adapter's public handles (``hf_model``, ``tokenizer``, ``prompt_ids``,
``vision_inputs``, ``tokenize``), so training sees exactly what evaluation does.
Each step encodes ``batch`` videos, runs the LLM over the shared prefix (system
prompt + visual tokens) and then over each question from that prefix's KV cache;
under causal attention this equals the full-sequence forward (checked against the
adapter's prefill logits in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from demo_model.grounding import (
    IGNORE,
    HeadTargets,
    attention_loss,
    question_span,
    video_targets,
)
from tokenred.adapters.tiny import TinyAdapter
from tokenred.builtin.synthetic_render import COLORS, SHAPES
from tokenred.data import Sample

LETTERS = "ABCD"


class Trainer:
    """Batched training/evaluation forward of the tiny model through its adapter."""

    def __init__(self, adapter: TinyAdapter, probe_layer: int = 1) -> None:
        """Keep the adapter's model, tokenizer ids and the fixed prompt prefix.

        ``probe_layer`` indexes the LLM's hidden states (0 = its input) at which the
        visual tokens get the position and shape probe (:meth:`probe_loss`); the
        probe is a linear layer owned by the trainer, never saved.
        """
        self.adapter = adapter
        self.model: Any = adapter.hf_model
        tok = adapter.tokenizer
        self.letter_ids = [int(tok.convert_tokens_to_ids(c)) for c in LETTERS]
        self.end_id = int(tok.convert_tokens_to_ids("<|im_end|>"))
        self.pad_id = int(tok.pad_token_id)
        self.colour_ids = [int(tok.convert_tokens_to_ids(w)) for w in ("none", *COLORS)]
        named = (*COLORS, *SHAPES)
        self.object_ids = {int(tok.convert_tokens_to_ids(w)) for w in named}
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
        self.attn = str(adapter.describe()["attn_implementation"])
        self.before, _ = adapter.prompt_ids("")

    def pixels(self, frames: np.ndarray) -> Tensor:
        """``[B, T, H, W, 3]`` uint8 -> ``[B, T, 3, S, S]`` via the adapter."""
        per = [self.adapter.vision_inputs(np.array(f)) for f in frames]
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
            [*self.adapter.prompt_ids(q)[1], self.letter_ids[LETTERS.index(a)]]
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
        :func:`demo_model.grounding.probe_labels`; the three losses are summed.
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
            lo, hi = question_span(suffix, self.adapter.tokenize(question))
            target[i, p + lo : p + hi] = 1.0 / (hi - lo)
        lq = attention_loss(qa[:, None], target[:, None], 0)
        # Layer 1: the video heads read the cells the question is about.
        dist, index = video_targets(cells, heads)  # [B, H', N], [H']
        va = self.answer_attn[heads.video_layer][:, index]  # [B, H', K]
        lv = attention_loss(va, dist, len(self.before))
        return lq + lv

    def object_loss(self, questions: Sequence[str], head: int = 1) -> Tensor:
        """Layer-0 grounding of one more head on the words that name an object.

        A composite clip holds several objects of the same colour group (the lamp
        and the movers, say), and only the colour and shape words of the question
        say which one it asks about; the grounded layer-0 head averages all the
        question's words, where those two are diluted. This head reads only them
        (questions without such words, like "Which object appears first?", add
        nothing). Needs the last ``logits(..., ground=True)`` call.
        """
        if not self.answer_attn:
            msg = "object_loss needs a logits(..., ground=True) call first"
            raise RuntimeError(msg)
        p = self.prefix_len
        qa = self.answer_attn[0][:, head]  # [B, K]
        target = torch.zeros_like(qa)
        for i, (suffix, question) in enumerate(zip(self.suffixes, questions)):
            lo, hi = question_span(suffix, self.adapter.tokenize(question))
            hits = [k for k in range(lo, hi) if suffix[k] in self.object_ids]
            for k in hits:
                target[i, p + k] = 1.0 / len(hits)
        return attention_loss(qa[:, None], target[:, None], 0)

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
