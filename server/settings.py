"""The aggregation server's settings: the one definition of ``fedsecure server``'s flags,
its configuration file's keys (``run.toml``), their defaults and the configuration
reference (:mod:`fedsecure.settings`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedsecure.settings import option
from fedsecure.types import PhaseConfig, RunConfig, TaskKind
from server.align.engine.recipe import GRPO_RECIPE

# Argument groups of `fedsecure server --help`, by configuration-file section.
TITLES = {
    "run": "start a run at start-up (ignored when a run already exists)",
    "training": "reward rounds",
    "personalise": "PERSONALISE phase (TAP, in the run's last round; also `fedsecure admin personalise`)",
    "align": "ALIGN stage (phase 'align': GRPO of the server's policy on the clients' fused scores)",
}


@dataclass(frozen=True)
class ServerSettings:
    """Everything an operator sets to run the aggregation server."""

    kit: Path = option(help="the server kit folder", section="server", required=True)
    address: str | None = option(help="host:port to bind (default: the kit's server_address; port 0 = any)",
                                 section="server")
    state: Path | None = option(help="state folder: its database, object store and metrics (default: KIT/state)",
                                section="server")
    port_file: Path | None = option(help="write the bound port here once serving", section="server", in_file=False)
    keyholder_address: str | None = option(help="host:port of the key holder (default: the kit's keyholder_address)",
                                           section="server")
    object_store_limit_mib: int | None = option(
        help="most MiB of uploaded chunks and aggregates kept on disk; an upload beyond it is refused whole with "
             "RESOURCE_EXHAUSTED (default: no limit but the disk's)", section="server")

    rounds: int | None = option(help="rounds of the run; omit to wait for `fedsecure admin start`", section="run")
    quorum: int = option(2, help="fewest clients whose updates are aggregated", section="run")
    min_clients: int = option(2, help="enrolled clients the run waits for", section="run")
    sample_rate: float = option(1.0, help="share of enrolled clients sampled each round", section="run")
    phases: str = option("report_ledger", help="comma-separated task kinds per round (in a file: a list)",
                         section="run")
    phase_deadline: int = option(60, help="seconds per phase", section="run", key="phase_deadline_s")
    max_attempts: int = option(3, help="tries of a round before the run fails", section="run")
    enroll_timeout: int = option(120, help="seconds the run waits for min_clients", section="run",
                                 key="enroll_timeout_s")

    local_steps: int = option(100, help="DP steps per client per round", section="training")
    learning_rate: float = option(0.01, help="for DP training (listwise, with a 0.1 clip; chosen by "
                                             "`fedsecure bench reward-sweep`)", section="training")
    batch_size: int = option(128, help="expected DP batch size (records)", section="training")
    share_heads: bool = option(False, help="also average the reward models' heads and fusion layers among clients "
                                           "of one kind, under CKKS with FedCola's coefficient (as their MLP "
                                           "adapters)", section="training")
    prompts_per_round: int = option(32, help="public questions scored per round (every answer of each)",
                                    section="training")
    data_seed: int = option(0, help="seed of the task's split (the server's public parts)", section="training")

    replace_margin: float = option(0.01, help="replace a component when L_global + margin < L_personal on the "
                                              "client's validation split", section="personalise")
    distill_steps: int = option(30, help="DP-SGD steps of distillation (0: replacement only)", section="personalise")
    distill_weight: float = option(1.0, help="λ of the distillation term", section="personalise")
    distill_temperature: float = option(1.0, help="τ of the distillation term", section="personalise")

    align_steps: int = option(20, help="GRPO steps per round (0: no ALIGN stage)", section="align", key="steps")
    align_out: Path | None = option(help="policy, router and checkpoints (default: STATE/align)", section="align",
                                    key="out")
    align_prompts: int = option(16, help="prompts per GRPO step", section="align", key="prompts")
    align_first_round: int = option(1, help="the run round the ALIGN stage starts in (earlier rounds train the "
                                            "reward models only)", section="align", key="first_round")
    align_step_deadline: float = option(30.0, help="seconds a step waits for scores", section="align",
                                        key="step_deadline_s")
    align_hacking_rounds: int = option(2, help="rounds of rising fused reward with falling held-out accuracy that "
                                               "stop the stage", section="align", key="hacking_rounds")
    align_min_fused_lift: float = option(
        0.5, help="the fused reward only on the question types where it puts a right answer first this far above "
                  "chance on the router's public questions: among the policy's own samples (policy_lists), else "
                  "among the curated answers of the type (0 chance, 1 always right; -1: every type); the other "
                  "types get a flat reward, so only the task's answer-form check (and the KL term) trains them",
        section="align", key="min_fused_lift")
    align_learning_rate: float = option(
        GRPO_RECIPE.learning_rate, help="GRPO's learning rate (AdamW, full fine-tuning of the language model; the "
                                        "vision tower frozen)", section="align", key="learning_rate")
    align_beta: float = option(
        GRPO_RECIPE.beta, help="β of GRPO's KL penalty to the starting policy: it holds every type near where it "
                               "started, the types with a flat reward included", section="align", key="beta")
    align_best_nll: float = option(
        GRPO_RECIPE.best_nll, help="weight of the likelihood of each group's best-rewarded completion in GRPO's loss "
                                   "(reward-ranked fine-tuning): it keeps a rare right answer from being trained "
                                   "away on a type the start cannot yet tell apart (0: plain GRPO)",
        section="align", key="best_nll")
    align_left_out_beta: float = option(
        1.0, help="KL weight to the starting policy on the question types min_fused_lift leaves out (their reward "
                  "is flat): it holds them where they started while the trusted types train the shared weights "
                  "(0: no anchor)", section="align", key="left_out_beta")
    align_policy_lists: int = option(
        16, help="public router questions per type the policy answers itself at each refresh; the fused reward's "
                 "lift is measured on its samples, judged by the task's metric (0: on the curated wrong answers)",
        section="align", key="policy_lists")
    align_monitor_every: int = option(
        10, help="measure the policy on held-out public questions every this many GRPO steps inside a round, and "
                 "export it there if it passes the promotion gate (0: at the round's end only)",
        section="align", key="monitor_every")

    def __post_init__(self) -> None:
        # Refused at start, naming the setting: a bad value found mid-run would cost a round.
        positive = {"quorum": self.quorum, "min_clients": self.min_clients, "phase_deadline": self.phase_deadline,
                    "max_attempts": self.max_attempts, "local_steps": self.local_steps,
                    "batch_size": self.batch_size, "prompts_per_round": self.prompts_per_round,
                    "align_prompts": self.align_prompts, "align_first_round": self.align_first_round}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.learning_rate <= 0 or self.align_learning_rate <= 0:
            raise ValueError(f"learning rates must be positive, got {self.learning_rate}, {self.align_learning_rate}")
        if self.align_beta < 0 or self.align_best_nll < 0 or self.align_left_out_beta < 0:
            raise ValueError(f"align_beta, align_best_nll and align_left_out_beta cannot be negative, got "
                             f"{self.align_beta}, {self.align_best_nll}, {self.align_left_out_beta}")
        if min(self.align_steps, self.distill_steps, self.align_policy_lists, self.align_monitor_every) < 0:
            raise ValueError("align_steps, distill_steps, align_policy_lists and align_monitor_every cannot be negative")
        self.phase_kinds()  # an unknown phase name is refused here

    def phase_kinds(self) -> tuple[TaskKind, ...]:
        """The task kinds of :attr:`phases`, in order; ValueError naming the known ones."""
        try:
            return tuple(TaskKind[k.strip().upper()] for k in self.phases.split(",") if k.strip())
        except KeyError as exc:
            raise ValueError(f"unknown phase kind {exc}; choose from {[k.name.lower() for k in TaskKind]}") from exc

    def run_config(self) -> RunConfig | None:
        """The run to start at start-up (None: wait for ``fedsecure admin start``)."""
        if self.rounds is None:
            return None
        return RunConfig(rounds=self.rounds, sample_rate=self.sample_rate, quorum=self.quorum,
                         min_clients=self.min_clients,
                         phases=tuple(PhaseConfig(k, self.phase_deadline) for k in self.phase_kinds()),
                         max_attempts=self.max_attempts, enroll_timeout_s=self.enroll_timeout)

    def state_dir(self, kit_path: Path) -> Path:
        """Where the server keeps its state (default: inside its kit)."""
        return self.state or kit_path / "state"
