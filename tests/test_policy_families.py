"""Every supported vision-language family through the policy path: a tiny checkpoint of
each is built, saved and loaded by ``load_policy``; prompts go through its processor and
chat template; the log-probabilities the rollouts compute from a repeated prefix cache equal
a full forward of prompt + completion (image inputs and positions, M-RoPE included); the
output depends on the image; one GRPO step changes the policy; ``fedsecure align`` and
``fedsecure eval`` run on the checkpoint directory.

A check that passes with the image ignored proves nothing, hence the image test; a check
of positions that recomputed them the same way as the code under test would prove nothing
either, hence the full forward leaves the numbering to the model itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from apps.cli import main as cli_main
from fedsecure.errors import PolicyLoadError
from fedsecure.models.policy_vlm import SUPPORTED_FAMILIES, encode_prompt, load_policy
from server.align.engine.devices import select_placement
from server.align.engine.grpo import GRPOConfig, GRPOEngine
from server.align.engine.policy import Policy, PolicySetup, vlm_suppressed_ids
from server.align.engine.positions import prompt_positions
from server.align.engine.prompts import (
    ImageInputs,
    Prompt,
    collate_images,
    collate_prompts,
    vqa_prompts,
)
from server.align.engine.rollouts import SamplingConfig, completion_logp, generate
from tasks.easyvqa.data import load_records
from tests.policy_families import (
    BUILDERS,
    STAND_INS,
    qwen_inputs,
    qwen_parts,
    save_family,
)

LOADABLE = sorted(BUILDERS)
QWEN = ["qwen2_vl", "qwen2_5_vl"]
IN_MEMORY = [*sorted(STAND_INS), *QWEN]  # their processors need torchvision (see tests/policy_families.py)
QUESTIONS = load_records("test")[:3]  # questions of different lengths: left padding is exercised


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {family: save_family(family, root / family) for family in LOADABLE}


def _image(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)


Encode = Callable[[str, np.ndarray], Prompt]


def _family(name: str, saved: dict[str, Path]) -> tuple[Any, Encode, torch.Tensor]:
    """(model, prompt encoder (question, image) -> Prompt, ids never to sample) of one family:
    through its processor and chat template, or for Qwen what its processor would return."""
    if name in QWEN:
        model, tok, images = qwen_parts(name)

        def encode_qwen(question: str, image: np.ndarray) -> Prompt:
            ids, inputs = qwen_inputs(tok, images, question=question, image=image)
            return Prompt(question, question, ids, images=ImageInputs.of(inputs))
        return model, encode_qwen, torch.tensor([model.config.image_token_id, tok.pad_token_id])
    model, processor = STAND_INS[name]() if name in STAND_INS else load_policy(saved[name])

    def encode(question: str, image: np.ndarray) -> Prompt:
        ids, inputs = encode_prompt(processor, question=question, image=image)
        return Prompt(question, question, ids, images=ImageInputs.of(inputs))
    return model, encode, torch.tensor(vlm_suppressed_ids(processor))


def _prompts(encode: Encode) -> list[Prompt]:
    return [encode(r.question, _image(i)) for i, r in enumerate(QUESTIONS)]


def _eos_pad(model: Any) -> tuple[int, int]:
    text = model.config.get_text_config()
    return int(text.eos_token_id), int(text.pad_token_id)


@pytest.mark.parametrize("family", LOADABLE)
def test_each_family_loads_through_the_generic_loader(family: str, saved: dict[str, Path]) -> None:
    model, processor = load_policy(saved[family])
    assert model.config.model_type == family and family in SUPPORTED_FAMILIES
    assert processor.chat_template and (saved[family] / "model.safetensors").is_file()
    prompt = vqa_prompts(QUESTIONS[:1], processor=processor)[0]
    # the image placeholder is expanded by the family's processor, not left as one token
    assert prompt.input_ids.count(processor.tokenizer.convert_tokens_to_ids(processor.image_token)) > 1


@pytest.mark.parametrize("family", LOADABLE + IN_MEMORY)
def test_cached_rollout_log_probs_equal_a_full_forward(family: str, saved: dict[str, Path]) -> None:
    """The rollouts' log-probs (prefix encoded once, its cache repeated for G completions,
    one token at a time) and the GRPO scorer's equal one plain forward of each whole row."""
    model, encode, never = _family(family, saved)
    prompts = _prompts(encode)
    eos, pad = _eos_pad(model)
    batch = collate_prompts(prompts, pad_id=pad)
    g, config = 2, SamplingConfig(temperature=1.0, max_new_tokens=5)
    rollouts = generate(model, batch, group_size=g, config=config, eos_id=eos, pad_id=pad,
                        generator=torch.Generator().manual_seed(0), suppressed=never)
    with torch.no_grad():
        scored = completion_logp(model, rollouts, temperature=1.0, images=batch.images, suppressed=never)
        ids = torch.cat([rollouts.prompt_ids, rollouts.completion_ids], 1)
        mask = torch.cat([rollouts.prompt_mask, rollouts.completion_mask], 1)
        images = collate_images([p for p in prompts for _ in range(g)])
        if family in QWEN:  # what the processor returns besides: token types, for the model's own M-RoPE
            images["mm_token_type_ids"] = (ids == model.config.image_token_id).int()
        # no position ids: the model numbers the sequence itself (M-RoPE from its own
        # get_rope_index; 1-D rope from 0 over the padding, a shift rope is invariant to)
        logits = model(input_ids=ids, attention_mask=mask, **images).logits
    t = rollouts.completion_ids.shape[1]
    logits = logits[:, -t - 1:-1].float().index_fill(-1, never, float("-inf"))
    full = logits.log_softmax(-1).gather(-1, rollouts.completion_ids[..., None]).squeeze(-1)
    full = torch.where(rollouts.completion_mask.bool(), full, 0.0)
    assert rollouts.completion_mask.sum() >= 2 * len(prompts)
    torch.testing.assert_close(rollouts.sampling_logp, full, atol=1e-4, rtol=0)
    torch.testing.assert_close(scored, full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", LOADABLE + IN_MEMORY)
def test_the_answer_depends_on_the_image(family: str, saved: dict[str, Path]) -> None:
    """Same question, another image: the next-token distribution moves (a path that
    dropped an image input, or fed every prompt the same image, would leave it unchanged)."""
    model, encode, _ = _family(family, saved)
    original, swapped = encode(QUESTIONS[0].question, _image(0)), encode(QUESTIONS[0].question, _image(99))
    assert swapped.input_ids == original.input_ids
    _, pad = _eos_pad(model)
    batch = collate_prompts([original, swapped], pad_id=pad)
    with torch.no_grad():
        images = batch.images or {}
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=prompt_positions(model, batch.input_ids, batch.attention_mask, images),
                       **images).logits[:, -1]
    assert (logits[0] - logits[1]).abs().max() > 1e-3


@pytest.mark.parametrize("family", LOADABLE + IN_MEMORY)
def test_one_grpo_step_updates_every_family(family: str, saved: dict[str, Path]) -> None:
    model, encode, never = _family(family, saved)
    prompts = _prompts(encode)
    eos, pad = _eos_pad(model)
    policy = Policy(model, setup=PolicySetup(adapter="lora", lora_rank=4, lora_alpha=8), placement=select_placement("cpu"),
                    eos_id=eos, pad_id=pad, is_vlm=True, suppressed_ids=never.tolist())
    before = {n: p.detach().clone() for n, p in policy.trainable()}
    engine = GRPOEngine(policy=policy, config=GRPOConfig(group_size=4, prompts_per_step=3, learning_rate=1e-2,
                                                         sampling=SamplingConfig(max_new_tokens=4), seed=0))
    # a reward that differs between different completions, so groups have variance
    report = engine.step(prompts, lambda ps, completions: [float(sum(map(ord, c)) % 5) for c in completions])
    assert report.skipped is None and report.grad_norm > 0
    assert any(not torch.equal(before[n], p) for n, p in policy.trainable())


@pytest.mark.parametrize("family", LOADABLE)
def test_align_and_eval_run_on_each_family_checkpoint(family: str, saved: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "job"
    assert cli_main(["align", "--out", str(out), "--policy", str(saved[family]), "--adapter", "lora",
                     "--sft-epochs", "1", "--steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                     "--eval-limit", "4", "--device", "cpu"]) == 0
    aligned = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert aligned["steps"] == 1 and aligned["end"]["count"] == 4
    assert cli_main(["eval", "--checkpoint", aligned["policy_dir"], "--limit", "4", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["count"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    model, _ = load_policy(Path(aligned["policy_dir"]))
    assert model.config.model_type == family


def test_an_unsupported_family_is_refused_naming_the_supported_ones(tmp_path: Path) -> None:
    from transformers import PaliGemmaConfig

    PaliGemmaConfig().save_pretrained(tmp_path / "paligemma")
    with pytest.raises(PolicyLoadError, match="supported families: llava .*llava_next.*idefics3.*qwen2_vl"):
        load_policy(tmp_path / "paligemma")


def test_a_checkpoint_without_a_chat_template_is_refused(saved: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(saved["llava"], plain)
    for name in ("chat_template.jinja", "chat_template.json"):
        (plain / name).unlink(missing_ok=True)
    config = json.loads((plain / "processor_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(PolicyLoadError, match="chat template"):
        load_policy(plain)
