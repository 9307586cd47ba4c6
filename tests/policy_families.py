"""Tiny checkpoints of each vision-language family the policy path supports, built from
config with a word tokenizer over the easy-VQA vocabulary, the family's own special tokens,
image processor and a chat template shaped like the family's real one (role words, image
markers, end-of-turn token as EOS). Saved in the standard layout, they are loaded by the
same ``load_policy`` that loads a downloaded checkpoint.

Qwen2-VL's and SmolVLM's processors cannot be built without torchvision, which this
machine's CPU-only torch cannot load (only CUDA builds of it exist for torch 2.13); for
SmolVLM :func:`smolvlm` stands in an Idefics3 processor around its image processor, for
Qwen2-VL :func:`qwen_inputs` produces what that processor would return (the chat template rendered, each image placeholder expanded to the
image's merged patch count, the image processor's ``pixel_values`` and ``image_grid_thw``),
so the model side (M-RoPE positions, image inputs) is tested all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from fedsecure.models.policy_vlm import build_tiny_vlm, save_policy, tiny_llama_config
from fedsecure.models.tokenizer import CLS, PAD, SEP, UNK, word_vocabulary
from tasks.easyvqa.data import vocabulary

ROLE_WORDS = ("user", "assistant", ":")


def word_tokenizer(specials: list[str], *, eos: str, bos: str | None = CLS, extra: dict[str, str] | None = None) -> Any:
    """A left-padding fast tokenizer: easy-VQA words, role words, the family's specials."""
    from transformers import PreTrainedTokenizerFast

    words = [*word_vocabulary(vocabulary()), *ROLE_WORDS, *specials]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(dict.fromkeys([*specials, PAD, CLS, SEP, UNK])))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=PAD,
                                   unk_token=UNK, padding_side="left", extra_special_tokens=extra or {})


def _seeded(seed: int, make: Callable[[], Any]) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make().eval()


def _clip_tower(image_size: int, patch: int) -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(image_size=image_size, patch_size=patch, hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=2)


def llava(seed: int = 0) -> tuple[Any, Any]:
    """LLaVA-1.5: the built-in policy."""
    return build_tiny_vlm(words=vocabulary(), seed=seed)


LLAVA_NEXT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] | upper }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def llava_next(seed: int = 0) -> tuple[Any, Any]:
    """LLaVA-NeXT (any-resolution tiles: ``image_sizes``, 5-D ``pixel_values``)."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next import LlavaNextImageProcessorPil

    tok = word_tokenizer(["<image>"], eos=SEP, extra={"image_token": "<image>"})
    pinpoints = [[32, 32], [32, 64], [64, 32], [64, 64]]
    images = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                        image_grid_pinpoints=pinpoints, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=16,
                                   vision_feature_select_strategy="default", image_token="<image>",
                                   num_additional_image_tokens=1, chat_template=LLAVA_NEXT_TEMPLATE)
    text = tiny_llama_config(vocab_size=len(tok), hidden=64, layers=2, heads=4, bos_id=tok.bos_token_id,
                             eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    config = LlavaNextConfig(vision_config=_clip_tower(32, 16), text_config=text, image_grid_pinpoints=pinpoints,
                             image_token_index=tok.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="default", vision_feature_layer=-1)
    return _seeded(seed, lambda: LlavaNextForConditionalGeneration(config)), processor


IDEFICS3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
IDEFICS3_SPECIALS = ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>",
                     *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7))]


def _idefics_style(seed: int, config_cls: Any, model_cls: Any, image_processor_cls: Any) -> tuple[Any, Any]:
    """An Idefics3-architecture model (SigLIP-style tower, pixel shuffle) with an Idefics3
    processor around ``image_processor_cls``: (32 / 8)² patches, 2×2 merged per token by the
    pixel shuffle, so 4 image tokens per unsplit image."""
    from transformers import Idefics3Processor

    tok = word_tokenizer(IDEFICS3_SPECIALS, eos="<end_of_utterance>")
    images = image_processor_cls(do_image_splitting=False, size={"longest_edge": 32},
                                 max_image_size={"longest_edge": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=4,
                                  chat_template=IDEFICS3_TEMPLATE)
    text = tiny_llama_config(vocab_size=len(tok), hidden=64, layers=2, heads=4, bos_id=tok.bos_token_id,
                             eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    config = config_cls(vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                                       "num_hidden_layers": 2, "num_attention_heads": 2},
                        text_config=text.to_dict(), scale_factor=2,
                        image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    return _seeded(seed, lambda: model_cls(config)), processor


def idefics3(seed: int = 0) -> tuple[Any, Any]:
    """Idefics3 (``pixel_attention_mask``)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3 import Idefics3ImageProcessorPil

    return _idefics_style(seed, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil)


QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                 "<|video_pad|>"]


def qwen_parts(family: str = "qwen2_vl", seed: int = 0) -> tuple[Any, Any, Any]:
    """(model, tokenizer with chat template, image processor) of a tiny Qwen2-VL or
    Qwen2.5-VL (M-RoPE; ``image_grid_thw``; patches flattened across images)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig
    from transformers import Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    tok = word_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", bos=None)
    tok.chat_template = QWEN_TEMPLATE
    images = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                      size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32})
    ids = {s: tok.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    text = {"vocab_size": len(tok), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": tok.pad_token_id, "bos_token_id": None}
    vision = {"depth": 2, "num_heads": 2, "patch_size": 8, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "in_channels": 3}
    special = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
               "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}
    if family == "qwen2_vl":
        config: Any = Qwen2VLConfig(text_config=text, vision_config={**vision, "embed_dim": 32, "hidden_size": 64,
                                                                      "mlp_ratio": 2}, **special)
        cls: Any = Qwen2VLForConditionalGeneration
    else:
        config = Qwen2_5_VLConfig(text_config=text, vision_config={**vision, "hidden_size": 32,
                                                                    "intermediate_size": 64, "out_hidden_size": 64,
                                                                    "window_size": 32, "fullatt_block_indexes": [1]},
                                  **special)
        cls = Qwen2_5_VLForConditionalGeneration
    return _seeded(seed, lambda: cls(config)), tok, images


def qwen_inputs(tok: Any, images: Any, *, question: str, image: np.ndarray) -> tuple[tuple[int, ...], dict[str, torch.Tensor]]:
    """What Qwen2-VL's processor returns for one prompt: token ids with the image
    placeholder expanded to ``prod(grid) / merge²`` tokens, and the image inputs."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = images(images=[image], return_tensors="pt")
    count = int(out["image_grid_thw"][0].prod()) // images.merge_size ** 2
    text = text.replace("<|image_pad|>", "<|image_pad|>" * count)
    return tuple(tok(text, add_special_tokens=False)["input_ids"]), dict(out)


def smolvlm(seed: int = 0) -> tuple[Any, Any]:
    """SmolVLM (Idefics3's architecture, its own classes), with a stand-in processor:
    SmolVLM's own processor needs torchvision (a video processor), so its image processor
    goes into an ``Idefics3Processor``, which writes the same prompt for an unsplit image
    (``<fake_token_around_image><global-img><image>×n<fake_token_around_image>``)."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
    from transformers.models.smolvlm import SmolVLMImageProcessorPil

    return _idefics_style(seed, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil)


BUILDERS: dict[str, Callable[..., tuple[Any, Any]]] = {"llava": llava, "llava_next": llava_next, "idefics3": idefics3}
"""Families whose processor builds here: built, saved and loaded through ``load_policy``."""

STAND_INS: dict[str, Callable[..., tuple[Any, Any]]] = {"smolvlm": smolvlm}
"""Families tested in memory with a stand-in processor (their own needs torchvision)."""


def save_family(family: str, path: Path, *, seed: int = 0) -> Path:
    """Build the tiny checkpoint of ``family`` and save it to ``path``."""
    model, processor = BUILDERS[family](seed)
    return save_policy(model, processor, path)
