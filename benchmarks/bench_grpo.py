"""``fedsecure bench grpo``: one GRPO step (rollout + update) of our engine and of TRL's
``GRPOTrainer`` on the same tiny causal LM, prompts, G, lengths and optimiser, measured
side by side in one process (medians over alternating blocks of steps).

Both run standard GRPO: loss 'grpo' (sequence averaging), β = 0.04 with a reference
model, ε = 0.2, one update per batch, AdamW, temperature 1, top-p 1, full fine-tuning.
TRL 1.16 defaults to β = 0 and loss 'dapo'; they are set explicitly here. TRL is an
optional extra (installed without dependencies so pip cannot replace torch); when it is
missing, the JSON says why instead of a ratio.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fedsecure.models.policy_vlm import tiny_llama_config

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass(frozen=True)
class BenchConfig:
    """The measured configuration (defaults: a 0.78M-parameter Llama, hidden 128, 2 layers)."""

    vocab: int = 1000
    hidden: int = 128
    intermediate: int = 512
    layers: int = 2
    heads: int = 4
    prompts: int = 4
    group_size: int = 8
    prompt_tokens: int = 16
    new_tokens: int = 16
    learning_rate: float = 1e-5
    beta: float = 0.04
    threads: int = 2
    device: str = "cpu"


def _tokenizer(vocab: int) -> Any:
    """A word-level tokenizer over words ``t0 … t{vocab-1}`` (ids 0-2: pad, bos, eos)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, **{f"t{i}": i for i in range(3, vocab)}}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="[PAD]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", padding_side="left")


def toy_reward(completions: list[str], vocab: int) -> list[float]:
    """Share of tokens in the lower half of the vocabulary (a cheap, checkable reward)."""
    out = []
    for c in completions:
        ids = [int(w[1:]) for w in c.split() if w.startswith("t")]
        out.append(sum(i < vocab // 2 for i in ids) / max(len(ids), 1))
    return out


def _save_model(cfg: BenchConfig, root: Path) -> Path:
    from transformers import LlamaForCausalLM

    conf = tiny_llama_config(vocab_size=cfg.vocab, hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads)
    conf.intermediate_size, conf.tie_word_embeddings = cfg.intermediate, False
    torch.manual_seed(0)
    path = root / "model"
    LlamaForCausalLM(conf).save_pretrained(str(path))  # TRL reloads its reference from this path
    _tokenizer(cfg.vocab).save_pretrained(str(path))
    return path


def _prompts(cfg: BenchConfig) -> list[str]:
    g = torch.Generator().manual_seed(7)
    return [" ".join(f"t{i}" for i in torch.randint(3, cfg.vocab, (cfg.prompt_tokens,), generator=g).tolist())
            for _ in range(cfg.prompts)]


def _ours(cfg: BenchConfig, path: Path, prompts: list[str]) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    from server.align.engine.devices import select_placement
    from server.align.engine.grpo import GRPOConfig, GRPOEngine
    from server.align.engine.grpo_loss import GRPOLossConfig
    from server.align.engine.policy import Policy, PolicySetup, tokenizer_decoder
    from server.align.engine.prompts import Prompt
    from server.align.engine.rollouts import SamplingConfig

    tok = _tokenizer(cfg.vocab)
    placement = select_placement(cfg.device)
    policy = Policy(AutoModelForCausalLM.from_pretrained(str(path)), setup=PolicySetup(adapter="full"),
                    placement=placement, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, is_vlm=False,
                    decode=tokenizer_decoder(tok), suppressed_ids=[tok.pad_token_id, tok.bos_token_id])
    config = GRPOConfig(group_size=cfg.group_size, prompts_per_step=cfg.prompts, learning_rate=cfg.learning_rate,
                        loss=GRPOLossConfig(beta=cfg.beta, epsilon=0.2, averaging="sequence"),
                        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=cfg.new_tokens))
    engine = GRPOEngine(policy=policy, config=config)
    pool = [Prompt(f"p{i}", text, tuple(tok(text)["input_ids"])) for i, text in enumerate(prompts)]

    def reward(ps: Any, completions: Any) -> list[float]:
        return toy_reward(list(completions), cfg.vocab)
    return engine, (pool, reward)


def _time_ours(engine: Any, pool_reward: Any, steps: int) -> tuple[list[float], list[Any]]:
    pool, reward = pool_reward
    times, reports = [], []
    for _ in range(steps):
        start = time.perf_counter()
        reports.append(engine.step(pool, reward))
        if engine.policy.placement.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times, reports


def _time_trl(cfg: BenchConfig, path: Path, prompts: list[str], steps: int, out: Path) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            if torch.cuda.is_available() and cfg.device != "cpu":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._start)

    def reward(completions: list[str], **_: Any) -> list[float]:
        return toy_reward(completions, cfg.vocab)

    args = TRLConfig(output_dir=str(out), report_to="none", save_strategy="no", logging_steps=10_000,
                     max_steps=steps, per_device_train_batch_size=cfg.prompts * cfg.group_size,
                     num_generations=cfg.group_size, max_completion_length=cfg.new_tokens,
                     learning_rate=cfg.learning_rate, weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant",
                     warmup_steps=0, beta=cfg.beta, epsilon=0.2, loss_type="grpo", scale_rewards="group",
                     num_iterations=1, temperature=1.0, top_p=1.0, use_cpu=cfg.device == "cpu",
                     bf16=cfg.device != "cpu", dataloader_num_workers=0, seed=0, disable_tqdm=True)
    data = Dataset.from_dict({"prompt": prompts * steps})
    timer = StepTimer()
    trainer = GRPOTrainer(model=str(path), reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=_tokenizer(cfg.vocab), callbacks=[timer])
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its logs; stdout is the JSON
        trainer.train()
    return timer.times


def bench_grpo(*, config: BenchConfig = BenchConfig(), steps: int = 10, repeats: int = 3) -> dict[str, object]:
    """Median seconds per GRPO step, ours and TRL's, and their ratio; ours' breakdown,
    completion tokens/s and (on a GPU) the policy update's model-FLOPs utilisation."""
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(config.threads)
    result: dict[str, object] = {"config": asdict(config)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = _save_model(config, root)
        prompts = _prompts(config)
        engine, pool_reward = _ours(config, path, prompts)
        result["config"]["params"] = sum(p.numel() for p in engine.policy.model.parameters())  # type: ignore[index]
        _time_ours(engine, pool_reward, 2)  # warm-up
        ours: list[float] = []
        reports: list[Any] = []
        trl: list[float] = []
        trl_error = None
        by_repeat: list[list[float]] = []
        for r in range(repeats):
            torch.set_num_threads(config.threads)  # the Trainer may have changed it
            t, rep = _time_ours(engine, pool_reward, steps)
            by_repeat.append([round(statistics.median(t), 4)])
            ours += t
            reports += rep
            if trl_error is None:
                try:
                    trl_times = _time_trl(config, path, prompts, steps + 1, root / f"trl{r}")[1:]  # first = warm-up
                    trl += trl_times
                    by_repeat[-1].append(round(statistics.median(trl_times), 4))
                except ImportError as exc:
                    trl_error = f"TRL is not installed ({exc.name}); install the benchmark extra: make bench-deps"
                except Exception as exc:  # noqa: BLE001 - reported in the JSON, not hidden
                    trl_error = f"TRL GRPOTrainer failed: {type(exc).__name__}: {exc}"
    ours_s = statistics.median(ours)
    result["ours_step_s"] = round(ours_s, 4)
    result["ours_rollout_s"] = round(statistics.median(r.rollout_s for r in reports), 4)
    result["ours_update_s"] = round(statistics.median(r.update_s for r in reports), 4)
    tokens = statistics.median(r.completion_tokens for r in reports)
    result["ours_completion_tokens_per_s"] = round(tokens / ours_s, 1)
    result["ours_steps"] = len(ours)
    result["medians_by_repeat"] = by_repeat  # [ours, trl] per alternating block
    # a skipped step (no reward variance) does no update and would flatter the timing
    result["ours_skipped_steps"] = sum(1 for r in reports if r.skipped)
    update_tokens = tokens + config.prompts * config.group_size * config.prompt_tokens
    # reference forward (2N per token) + policy forward and backward (6N per token)
    flops = 8 * float(result["config"]["params"]) * update_tokens  # type: ignore[index, arg-type]
    update_s = statistics.median(r.update_s for r in reports)
    result["ours_update_tflops"] = round(flops / update_s / 1e12, 4) if update_s > 0 else None
    if config.device != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
        result["gpu"] = name
        result["ours_update_mfu"] = round(flops / update_s / peak, 6) if peak else None
    if trl:
        result["trl_step_s"] = round(statistics.median(trl), 4)
        result["trl_steps"] = len(trl)
        result["ratio"] = round(statistics.median(trl) / ours_s, 3)
    else:
        result["trl_step_s"] = None
        result["ratio"] = None
        result["trl_error"] = trl_error or "TRL recorded no steps"
    return result
