"""The tiny LLaVA policy: built from config, saved and reloaded through the generic
loader; bad checkpoints, mismatched tokenizers and prompts without images are refused
before any training; SFT warm start, exact-match reward and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from fedsecure.errors import PolicyLoadError, PromptError
from tasks.easyvqa.data import vocabulary
from fedsecure.models.policy_vlm import (
    PATCH,
    build_tiny_vlm,
    check_tokenizer,
    encode_answer,
    encode_prompt,
    load_policy,
    save_policy,
    tiny_llama_config,
)
from server.align.engine.devices import select_placement
from server.align.engine.grpo import GRPOConfig, GRPOEngine
from server.align.engine.policy import Policy, PolicySetup
from server.align.engine.prompts import Prompt, vqa_prompts
from server.align.engine.rollouts import SamplingConfig
from server.align.engine.sft import SFTConfig, sft_warm_start
from server.align.engine.vqa_eval import (
    eval_prompts,
    evaluate_policy,
    exact_match_reward,
    normalise_answer,
)
from tasks.easyvqa import TASK as EASYVQA
from tasks.easyvqa.data import load_records
from tasks.easyvqa.shares import server_records


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, processor = build_tiny_vlm(words=vocabulary(), seed=0)
    return save_policy(model, processor, tmp_path_factory.mktemp("policy") / "tiny")


def test_a_saved_tiny_policy_loads_through_the_generic_loader(saved: Path) -> None:
    model, processor = load_policy(saved)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert (saved / "model.safetensors").is_file() and not list(saved.glob("*.bin"))
    reference, _ = build_tiny_vlm(words=vocabulary(), seed=0)
    record = load_records("test")[0]
    ids, images = encode_prompt(processor, question=record.question, image=np.zeros((64, 64, 3), np.uint8))
    assert ids.count(model.config.image_token_index) == (64 // PATCH) ** 2 == 64  # (64 / 8)² patches
    with torch.no_grad():
        a = model(input_ids=torch.tensor([ids]), **images).logits
        b = reference(input_ids=torch.tensor([ids]), **images).logits
    torch.testing.assert_close(a, b)


def test_the_saved_policy_reads_and_writes_free_text_beyond_the_tasks_words(saved: Path) -> None:
    """A hospital's question and answer use words easy-VQA never had: the reloaded
    policy's tokenizer spells them in pieces (no [UNK]) and decodes its own ids back to
    the text; the task's words stay one token each."""
    _, processor = load_policy(saved)
    tok = processor.tokenizer
    question = "Is the lesion in the left lung benign?"
    ids, _ = encode_prompt(processor, question=question, image=np.zeros((64, 64, 3), np.uint8))
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True).strip() == question.lower()
    answer = "a benign nodule, 4 mm."
    target = encode_answer(processor, answer)
    assert tok.unk_token_id not in target and target[-1] == tok.eos_token_id
    assert tok.decode(target, skip_special_tokens=True) == answer
    for word in ("circle", "yellow", "yes"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1

def test_missing_and_text_only_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "nowhere")
    LlamaForCausalLM(tiny_llama_config(vocab_size=40, hidden=32, layers=1, heads=2)).save_pretrained(tmp_path / "lm")
    with pytest.raises(PolicyLoadError, match="not a vision-language model"):
        load_policy(tmp_path / "lm")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    with pytest.raises(PolicyLoadError):
        load_policy(tmp_path / "junk")


def test_qwen_and_smolvlm_checkpoints_are_refused_with_the_reason_where_torchvision_is_missing(
        tmp_path: Path) -> None:
    """Their processors include a video processor, which transformers builds only with
    torchvision; the refusal says so rather than failing deep inside transformers."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, SmolVLMConfig
    from transformers.utils import is_torchvision_available

    if is_torchvision_available():  # this machine's CPU torch cannot load torchvision: the case CI has
        pytest.skip("torchvision present: these processors can be built")
    for name, config in (("qwen", Qwen2VLConfig()), ("qwen25", Qwen2_5_VLConfig()), ("smol", SmolVLMConfig())):
        config.save_pretrained(tmp_path / name)
        with pytest.raises(PolicyLoadError, match=f"{config.model_type}.*torchvision"):
            load_policy(tmp_path / name)


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(saved: Path, tmp_path: Path) -> None:
    model, processor = load_policy(saved)
    processor.tokenizer.add_tokens([f"extra{i}" for i in range(8)])
    with pytest.raises(PolicyLoadError, match="embeds only"):
        check_tokenizer(model, processor)
    # a checkpoint whose config moved the image token elsewhere
    moved = tmp_path / "moved"
    save_policy(*load_policy(saved), moved)
    config = json.loads((moved / "config.json").read_text())
    config["image_token_index"] = 3
    (moved / "config.json").write_text(json.dumps(config))
    with pytest.raises(PolicyLoadError, match="expects 3"):
        load_policy(moved)


def test_a_prompt_without_an_image_is_refused_before_training(saved: Path) -> None:
    model, processor = load_policy(saved)
    with pytest.raises(PromptError, match="image"):
        encode_prompt(processor, question="what shape is it?", image=None)
    policy = Policy.for_vlm(model, processor, setup=PolicySetup(adapter="full"), placement=select_placement("cpu"))
    engine = GRPOEngine(policy=policy, config=GRPOConfig(sampling=SamplingConfig(max_new_tokens=3)))
    good = vqa_prompts(load_records("test")[:2], processor=processor)
    blind = Prompt("no-image", "what shape is it?", good[0].input_ids)
    before = [p.detach().clone() for _, p in policy.trainable()]
    with pytest.raises(PromptError, match="no-image"):
        engine.train([*good, blind], exact_match_reward, steps=1)
    assert all(torch.equal(a, p) for a, (_, p) in zip(before, policy.trainable(), strict=True))


def test_exact_match_reward_normalises_text() -> None:
    p = Prompt("x", "what color?", (1,), answer="red")
    assert normalise_answer("  Red. ") == "red"
    assert exact_match_reward([p, p, p], ["red", "RED!", "blue"]) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="no reference"):
        exact_match_reward([Prompt("y", "q", (1,))], ["red"])


def test_sft_warm_start_teaches_the_answer_format_and_grpo_updates_the_vlm() -> None:
    model, processor = build_tiny_vlm(words=vocabulary(), seed=1)
    _, seed_set = server_records(seed=0)
    prompts = vqa_prompts(seed_set[:96], processor=processor)
    targets = [encode_answer(processor, p.answer) for p in prompts]  # type: ignore[arg-type]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = sft_warm_start(model, prompts=prompts, targets=targets, pad_id=processor.tokenizer.pad_token_id,
                            config=SFTConfig(epochs=4, batch_size=16, learning_rate=2e-3))
    assert losses[-1] < 0.6 * losses[0]
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())

    policy = Policy.for_vlm(model, processor, setup=PolicySetup(adapter="lora"), placement=select_placement("cpu"))
    evaluation = evaluate_policy(policy, eval_prompts(processor, task=EASYVQA, limit=64, seed=0))
    assert evaluation.count == 64 and 0.0 <= evaluation.accuracy <= 1.0
    assert set(evaluation.by_type) <= {"yesno", "shape", "color"}
    assert set(evaluation.by_type_count) == set(evaluation.by_type) and sum(evaluation.by_type_count.values()) == 64
    engine = GRPOEngine(policy=policy, config=GRPOConfig(prompts_per_step=8, learning_rate=1e-2,
                                                         sampling=SamplingConfig(max_new_tokens=4)))
    adapters = {n: p.detach().clone() for n, p in policy.trainable()}
    report = engine.step(prompts[:8], exact_match_reward)
    assert report.skipped is None and report.kl == 0.0 and 0.0 <= report.mean_reward <= 1.0
    assert any(not torch.equal(adapters[n], p) for n, p in policy.trainable())
