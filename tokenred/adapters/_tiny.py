"""Tiny offline checkpoints: a word-level tokenizer and small configs of each family.

The embedded ``tiny`` model and the adapter tests need checkpoints that load
without any download. The tokenizer is a ``tokenizers`` WordLevel model over a
fixed vocabulary (special tokens of every supported chat template, letters,
digits, punctuation and the words of video multiple-choice prompts); unknown words
map to ``<unk>``. Configs follow the real architectures at toy sizes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_TOKENS = (
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<video>",
    "<image>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|video_pad|>",
    "<|image_pad|>",
    "<s>",
    "</s>",
)
PUNCTUATION = tuple(".,:;?!'\"()[]-/")
LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
DIGITS = tuple("0123456789")
WORDS = (
    # chat templates
    "system user assistant USER ASSISTANT You you are helpful "
    # colours and shapes
    "red green blue yellow magenta cyan white black orange purple pink brown gray "
    "grey color colour colors colored circle circles square squares triangle "
    "triangles cross crosses diamond diamonds star rectangle shape shapes dot dots "
    "ball balls box object objects item items thing things "
    # motion and space
    "left right up down top bottom middle center centre corner side moves move "
    "moving moved goes go going appears appear appeared disappears disappear "
    "enters leaves stays stay still static bounces bounce rotates spins jumps "
    "toward towards across through around along near far inside outside above "
    "below between behind front direction position location path "
    # counting and time
    "one two three four five six seven eight nine ten zero none once twice "
    "times time first second third last final next previous before after during "
    "while when then begin beginning start end ending early late earlier later "
    "same different more less most least many much how count number numbers "
    "frame frames clip video videos scene second seconds minute minutes "
    # question words and instructions
    "which what who where why whose whom is are was were be been does do did "
    "has have had can could will would should the a an of in on at to from by "
    "with without for and or not no yes it its this that these those there "
    "here each every all any some other another only also than as if so "
    "question questions answer answers option options letter letters choice "
    "choices select choose best correct following given directly respond "
    "provided based on event events happen happens happened order sequence "
    "true false describe describes description shown shows show seen see "
    "watch watched visible re ll ve "
    # generic nouns and adjectives
    "big small large tiny bigger smaller larger long short fast slow quick "
    "new old same bright dark light heavy empty full person people man woman "
    "hand car dog cat tree house room table door window water sky ground"
)


def vocabulary() -> list[str]:
    """Return the tiny vocabulary in id order (special tokens first)."""
    words = WORDS.split()
    capitalised = [w[:1].upper() + w[1:] for w in words]
    out: list[str] = []
    seen: set[str] = set()
    for tok in (*SPECIAL_TOKENS, *PUNCTUATION, *LETTERS, *DIGITS, *words, *capitalised):
        if tok not in seen:
            seen.add(tok)
            out.append(tok)
    return out


def build_tokenizer() -> Any:
    """Return a ``PreTrainedTokenizerFast`` over :func:`vocabulary` (offline)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    tok.add_special_tokens(
        [AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<s>",
        additional_special_tokens=[
            s for s in SPECIAL_TOKENS if s not in {"<unk>", "<s>"}
        ],
    )


def _ids(tokenizer: Any) -> dict[str, int]:
    return {s: int(tokenizer.convert_tokens_to_ids(s)) for s in SPECIAL_TOKENS}


def _text(vocab_size: int, ids: dict[str, int], **over: Any) -> dict[str, Any]:
    cfg = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<s>"],
        "tie_word_embeddings": False,
    }
    cfg.update(over)
    return cfg


def tiny_config(family: str, tokenizer: Any, **over: Any) -> Any:
    """Return a small transformers config of ``family`` matching ``tokenizer``.

    Args:
        family: ``llava_onevision``, ``qwen2_vl``, ``qwen2_5_vl`` or
            ``llava_next_video``.
        tokenizer: From :func:`build_tokenizer`.
        over: ``text``/``vision`` dicts merged into the defaults, or top-level keys.
    """
    import transformers as tf

    ids = _ids(tokenizer)
    size = ((len(tokenizer) + 63) // 64) * 64
    text = _text(size, ids, **over.pop("text", {}))
    vision_over = over.pop("vision", {})
    if family == "llava_onevision":
        vision = {"model_type": "siglip_vision_model", "hidden_size": 32}
        vision |= {"intermediate_size": 64, "num_hidden_layers": 2}
        vision |= {"num_attention_heads": 2, "image_size": 32, "patch_size": 4}
        return tf.LlavaOnevisionConfig(
            text_config={"model_type": "qwen2", **text},
            vision_config=vision | vision_over,
            image_token_index=ids["<image>"],
            video_token_index=ids["<video>"],
            **over,
        )
    if family == "llava_next_video":
        vision = {"model_type": "clip_vision_model", "hidden_size": 32}
        vision |= {
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "projection_dim": 32,
        }
        vision |= {"num_attention_heads": 2, "image_size": 32, "patch_size": 4}
        return tf.LlavaNextVideoConfig(
            text_config={"model_type": "llama", **text},
            vision_config=vision | vision_over,
            image_token_index=ids["<image>"],
            video_token_index=ids["<video>"],
            **over,
        )
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    quarter = head_dim // 4
    rope = {
        "rope_type": "default",
        "rope_theta": 1e6,
        "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter],
    }
    text = {"rope_parameters": rope, **text}
    tokens: dict[str, Any] = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    common: dict[str, Any] = {
        "depth": 2,
        "num_heads": 2,
        "patch_size": 4,
        "spatial_merge_size": 2,
    }
    common |= {"temporal_patch_size": 2}
    if family == "qwen2_vl":
        vision = common | {"embed_dim": 32, "hidden_size": text["hidden_size"]}
        vision |= {"mlp_ratio": 2}
        return tf.Qwen2VLConfig(
            text_config=text, vision_config=vision | vision_over, **tokens, **over
        )
    if family == "qwen2_5_vl":
        vision = common | {"hidden_size": 32, "intermediate_size": 64}
        vision |= {"out_hidden_size": text["hidden_size"], "window_size": 16}
        vision |= {"fullatt_block_indexes": [1], "tokens_per_second": 2}
        return tf.Qwen2_5_VLConfig(
            text_config=text, vision_config=vision | vision_over, **tokens, **over
        )
    msg = f"no tiny config for family '{family}'"
    raise ValueError(msg)


MODEL_CLASSES = {
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


def save_tiny_checkpoint(
    family: str,
    directory: str | Path,
    *,
    seed: int = 0,
    weights: bool = True,
    **over: Any,
) -> Path:
    """Write a random-weight tiny checkpoint of ``family`` with ``save_pretrained``.

    Args:
        family: See :func:`tiny_config`.
        directory: Target directory (created).
        seed: Seed of the weight init (the global RNG is left untouched).
        weights: Also write ``model.safetensors`` (config and tokenizer always).
        over: Config overrides for :func:`tiny_config`.
    """
    import torch
    import transformers as tf

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(family, tokenizer, **over)
    tokenizer.save_pretrained(str(out))
    if not weights:
        config.save_pretrained(str(out))
        return out
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(tf, MODEL_CLASSES[family])(config)
    model.save_pretrained(str(out))
    return out
