"""The server's policy models: a tiny LLaVA-style VLM built from config (CPU, tests, demo)
and a loader for any local Hugging Face vision-language checkpoint.

The tiny model is a real ``LlavaForConditionalGeneration`` (CLIP vision tower, projector,
Llama decoder) with a real ``LlavaProcessor`` around a WordPiece tokenizer (the task's words
as whole tokens, any other word spelled in character pieces: free text in and out), saved in
the standard layout (safetensors + JSON), so it is loaded by exactly the code that loads a
downloaded checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from fedsecure.errors import PolicyLoadError, PromptError
from fedsecure.models.tokenizer import CLS, PAD, SEP, UNK, subword_vocabulary

IMAGE_TOKEN = "<image>"
# 8-pixel patches (64 image tokens): with 16-pixel ones the tower could not represent shape
# (linear probe 0.45, chance 0.33; 0.91 with 8-pixel patches pretrained on the server's
# labelled public images — issue 24)
PATCH = 8
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endfor %}")
"""The built-in policy's chat template: ``[CLS] <image> question``; no role words, as the
tiny model is trained from scratch on the task's questions and has no dialogue to follow."""


@dataclass(frozen=True)
class TinyVLMConfig:
    """Sizes of the built-in policy (about 0.45M parameters at these defaults)."""

    image_size: int = 64
    patch_size: int = PATCH
    vision_hidden: int = 64
    vision_layers: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    heads: int = 4


def tiny_llama_config(*, vocab_size: int, hidden: int = 128, layers: int = 2, heads: int = 4,
                      bos_id: int = 1, eos_id: int = 2, pad_id: int = 0) -> Any:
    """A small Llama decoder config (the text half of the tiny VLM, and the benchmark's LM)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=256, tie_word_embeddings=True,
                       bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)


def build_policy_processor(config: TinyVLMConfig = TinyVLMConfig(), *, words: Sequence[str]) -> Any:
    """A ``LlavaProcessor``: WordPiece over the task's words plus every character's pieces
    (:func:`~fedsecure.models.tokenizer.subword_vocabulary`) and ``<image>``, prompts
    ``[CLS] <image>×n question``, completions ``answer [SEP]`` ([SEP] is EOS), left padding.
    A word outside the task's vocabulary — a hospital's own question — is read and written
    as pieces, never collapsed to ``[UNK]`` (issue 25: free text end to end)."""
    from transformers import LlavaProcessor, PreTrainedTokenizerFast
    from transformers.models.clip import CLIPImageProcessorPil

    vocab = {t: i for i, t in enumerate([*subword_vocabulary(words), IMAGE_TOKEN])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # pieces join back into the word they spell
    tok.post_processor = processors.TemplateProcessing(single=f"{CLS} $A", special_tokens=[(CLS, vocab[CLS])])
    tok.add_special_tokens([IMAGE_TOKEN, PAD, CLS, SEP, UNK])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=CLS, eos_token=SEP, pad_token=PAD,
                                   unk_token=UNK, extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   padding_side="left")
    images = CLIPImageProcessorPil(size={"shortest_edge": config.image_size},
                                   crop_size={"height": config.image_size, "width": config.image_size},
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=config.patch_size,
                          vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                          num_additional_image_tokens=1, chat_template=TINY_CHAT_TEMPLATE)


def build_tiny_vlm(*, words: Sequence[str], config: TinyVLMConfig = TinyVLMConfig(), seed: int = 0) -> tuple[Any, Any]:
    """(model, processor): the built-in LLaVA-style policy over the task's ``words``,
    randomly initialised from ``seed``."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    processor = build_policy_processor(config, words=words)
    tok = processor.tokenizer
    vision = CLIPVisionConfig(image_size=config.image_size, patch_size=config.patch_size,
                              hidden_size=config.vision_hidden, intermediate_size=2 * config.vision_hidden,
                              num_hidden_layers=config.vision_layers, num_attention_heads=config.heads)
    text = tiny_llama_config(vocab_size=len(tok), hidden=config.text_hidden, layers=config.text_layers,
                             heads=config.heads, bos_id=tok.bos_token_id, eos_id=tok.eos_token_id,
                             pad_id=tok.pad_token_id)
    llava = LlavaConfig(vision_config=vision, text_config=text,
                        image_token_index=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                        vision_feature_select_strategy="default", vision_feature_layer=-1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(llava)
    return model.eval(), processor


def save_policy(model: Any, processor: Any, path: Path) -> Path:
    """Write a loadable checkpoint directory (safetensors weights, JSON config/tokenizer)."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    processor.save_pretrained(str(path))
    return path


def _text_vocab_size(config: Any) -> int:
    text = getattr(config, "text_config", None) or config
    return int(text.vocab_size)


def check_tokenizer(model: Any, processor: Any) -> None:
    """Refuse a tokenizer that does not fit the model: ids beyond the embedding table, or
    an image token that is not the one the model replaces with image features."""
    tok = getattr(processor, "tokenizer", processor)
    vocab = _text_vocab_size(model.config)
    if len(tok) > vocab:
        raise PolicyLoadError(f"tokenizer has {len(tok)} tokens but the model embeds only {vocab}")
    image_index = getattr(model.config, "image_token_index", getattr(model.config, "image_token_id", None))
    image_token = getattr(processor, "image_token", None)
    if image_index is not None and image_token is not None:
        got = tok.convert_tokens_to_ids(image_token)
        if got != image_index:
            raise PolicyLoadError(f"tokenizer maps {image_token} to {got}, the model expects {image_index}")
    if tok.eos_token_id is None or tok.pad_token_id is None:
        raise PolicyLoadError("the tokenizer defines no EOS or padding token")


SUPPORTED_FAMILIES = {
    "llava": "LLaVA-1.5, including the built-in tiny policy",
    "llava_next": "LLaVA-NeXT (any-resolution tiles, image_sizes)",
    "idefics3": "Idefics3 (pixel_attention_mask)",
    "qwen2_vl": "Qwen2-VL (M-RoPE, image_grid_thw; its processor needs torchvision)",
    "qwen2_5_vl": "Qwen2.5-VL (M-RoPE, image_grid_thw; its processor needs torchvision)",
    "smolvlm": "SmolVLM (pixel_attention_mask; its processor needs torchvision)",
}
"""Vision-language families the policy path handles completely (model_type -> what it is):
every image input their processor returns reaches the model, and positions follow their
rope (server/align/engine/positions.py)."""

NEEDS_TORCHVISION = frozenset({"qwen2_vl", "qwen2_5_vl", "smolvlm"})
"""Families whose processor includes a video processor, which transformers builds only with
torchvision installed, even for image-only use (transformers#48558)."""


def load_policy(path: Path, *, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """(model, processor) from a local vision-language checkpoint directory. Raises
    FileNotFoundError for a missing path and PolicyLoadError for anything that is not a
    usable VLM (a text-only model, an unsupported family, no processor or chat template,
    a tokenizer that does not match)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import is_torchvision_available
    from transformers.utils import logging as hf_logging

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model checkpoint at {path} (config.json missing)")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise PolicyLoadError(f"{path}: unreadable model config: {exc}") from exc
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise PolicyLoadError(f"{path} holds a {config.model_type!r} model, not a vision-language model")
    if config.model_type not in SUPPORTED_FAMILIES:
        # Fail closed: a family whose image inputs or positions the rollouts do not know
        # would load, run and train on wrongly handled images without a word.
        raise PolicyLoadError(
            f"{path} holds a {config.model_type!r} vision-language model; supported families: "
            + ", ".join(f"{k} ({v})" for k, v in SUPPORTED_FAMILIES.items()))
    if config.model_type in NEEDS_TORCHVISION and not is_torchvision_available():
        raise PolicyLoadError(f"{path} holds a {config.model_type!r} model, whose processor transformers "
                              "builds only with torchvision installed (pip install torchvision matching torch)")
    hf_logging.disable_progress_bar()
    try:
        processor = AutoProcessor.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise PolicyLoadError(f"{path}: cannot load model or processor: {exc}") from exc
    if not hasattr(processor, "image_processor"):
        raise PolicyLoadError(f"{path} has no image processor: its processor cannot take images")
    if not getattr(processor, "chat_template", None):
        raise PolicyLoadError(f"{path} has no chat template: the form of a question cannot be known")
    check_tokenizer(model, processor)
    return model.eval(), processor


TEXT_INPUTS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"})
"""Processor outputs that describe the text; every other output is an image input."""


def chat_prompt(processor: Any, question: str) -> str:
    """The checkpoint's own chat template applied to one user turn (an image, then the
    question) with the assistant's turn opened: the form the model was tuned to answer."""
    if not getattr(processor, "chat_template", None):
        raise PromptError("the policy's processor has no chat template: it cannot say how a question is asked")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def encode_prompt(processor: Any, *, question: str,
                  image: np.ndarray | None) -> tuple[tuple[int, ...], dict[str, torch.Tensor]]:
    """(token ids, image inputs) of one VQA prompt through the checkpoint's own processor
    and chat template. The image inputs are every non-text output of the processor, each
    with a leading dimension of this one prompt (``pixel_values``, and ``image_sizes``,
    ``image_grid_thw`` or ``pixel_attention_mask`` where the family has them)."""
    if image is None:
        raise PromptError("a vision-language policy needs an image with every prompt")
    if not question.strip():
        raise PromptError("empty question")
    text = chat_prompt(processor, question)
    tok = processor.tokenizer
    # as the processor's own apply_chat_template does: a template that writes BOS itself
    # must not get a second one from the tokenizer
    bos = tok.bos_token
    enc = processor(text=[text], images=[image], return_tensors="pt",
                    add_special_tokens=not (bos is not None and text.startswith(bos)))
    images = {k: v for k, v in enc.items() if k not in TEXT_INPUTS and isinstance(v, torch.Tensor)}
    if "pixel_values" not in images:
        raise PromptError("the policy's processor returned no pixel_values for the image")
    return tuple(enc["input_ids"][0].tolist()), images


def encode_answer(processor: Any, answer: str) -> tuple[int, ...]:
    """Token ids of a completion ``answer [EOS]`` (no BOS), as the policy should produce it."""
    tok = processor.tokenizer
    return (*tok(answer, add_special_tokens=False)["input_ids"], tok.eos_token_id)
