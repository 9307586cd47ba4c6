"""The alignment job end to end on the tiny policy (a few steps), its resume, the
exported checkpoint through ``fedsecure eval``, and ``fedsecure bench grpo``."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM

from apps.cli import main as cli
from benchmarks.bench_grpo import BenchConfig, bench_grpo
from fedsecure.models.policy_vlm import load_policy, tiny_llama_config
from server.align.engine.job import AlignmentSettings, run_alignment
from tasks.easyvqa import TASK as EASYVQA


def settings(out: Path, steps: int) -> AlignmentSettings:
    return AlignmentSettings(out=out, sft_epochs=2, vision_pretrain_steps=5, steps=steps, prompts_per_step=4, eval_limit=24,
                             checkpoint_every=2, learning_rate=1e-3, device="cpu")


def test_the_job_trains_exports_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = run_alignment(settings(tmp_path, steps=2), task=EASYVQA)
    assert first.steps == 2 and first.start.count == first.end.count == 24
    assert (tmp_path / "base" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "vision_pretrain.json").read_text())["images"] > 100
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 2
    base, _ = load_policy(tmp_path / "base")
    aligned, _ = load_policy(first.policy_dir)
    changed = [n for n, p in aligned.state_dict().items() if not p.equal(base.state_dict()[n])]
    assert changed  # the exported policy is the trained one, not the base

    second = run_alignment(settings(tmp_path, steps=4), task=EASYVQA)  # continues from step 2
    assert second.steps == 4
    assert second.start == first.start  # same starting point, read back rather than re-measured
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["result"]["steps"] == 4

    capsys.readouterr()
    assert cli(["eval", "--checkpoint", str(first.policy_dir), "--limit", "24", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 24 and out["accuracy"] == pytest.approx(second.end.accuracy)


def test_eval_and_align_refuse_bad_checkpoints_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["eval", "--checkpoint", str(tmp_path / "none"), "--limit", "4"]) == 2
    assert "no model checkpoint" in capsys.readouterr().err
    LlamaForCausalLM(tiny_llama_config(vocab_size=40, hidden=32, layers=1, heads=2)).save_pretrained(tmp_path / "lm")
    assert cli(["align", "--out", str(tmp_path / "job"), "--policy", str(tmp_path / "lm"), "--steps", "1"]) == 2
    assert "not a vision-language model" in capsys.readouterr().err
    assert not (tmp_path / "job" / "checkpoints").exists()  # refused before any training


def test_bench_grpo_reports_both_engines_or_why_trl_could_not_run() -> None:
    config = BenchConfig(hidden=32, intermediate=64, layers=1, heads=2, vocab=200, new_tokens=4, prompt_tokens=4)
    result = bench_grpo(config=config, steps=2, repeats=1)
    assert result["ours_step_s"] > 0 and result["ours_steps"] == 2  # type: ignore[operator]
    assert result["ours_skipped_steps"] == 0  # every timed step made its update
    assert result["ours_rollout_s"] + result["ours_update_s"] <= result["ours_step_s"] * 1.5  # type: ignore[operator]
    assert result["config"]["params"] > 0  # type: ignore[index]
    if importlib.util.find_spec("trl") is None:
        assert result["ratio"] is None and "make bench-deps" in str(result["trl_error"])
    else:
        assert result["trl_steps"] == 2 and result["ratio"] > 0  # type: ignore[operator]
