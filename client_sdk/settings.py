"""A client's settings: the one definition of ``fedsecure client``'s flags, its
configuration file's keys (``client.toml``), their defaults and the configuration
reference (:mod:`fedsecure.settings`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from client_sdk.dp_training import TRAINABLE_SETS
from client_sdk.join import DEFAULT_RESERVE
from fedsecure.models.reward import KINDS
from fedsecure.privacy.accountant import ACCOUNTANTS
from fedsecure.settings import option

# Fields that say whose data and model (shared with `fedsecure audit --membership`).
DATA_FIELDS = ("kit", "state", "kind", "pairs", "simulated_clients", "alpha", "data_seed", "max_pairs", "backbone")


@dataclass(frozen=True)
class ClientSettings:
    """Everything a hospital or a bank sets to run one federation participant."""

    kit: Path = option(help="this client's kit folder", section="client", required=True)
    state: Path | None = option(help="ledger and model folder (default: KIT/state)", section="client")
    address: str | None = option(help="server host:port (default: the kit's server_address)", section="client")
    summary: Path | None = option(help="write a JSON summary of the run here", section="client")
    max_idle: float | None = option(help="give up after this many idle seconds", section="client", key="max_idle_s")

    kind: str = option("image_text", help="reward model kind: image_text, image or text (docs/design.md §5)",
                       section="data", choices=KINDS)
    pairs: Path | None = option(help="local preference pairs: JSONL, Parquet or a `datasets` folder (check it "
                                     "first: `fedsecure data check PATH`)", section="data", required=True,
                                one_of="data")
    simulated_clients: str | None = option(
        help="comma-separated federation clients: use this client's simulated Dirichlet share of the task's data "
             "(demos, benchmarks)", section="data", required=True, one_of="data")
    alpha: float = option(0.5, help="Dirichlet concentration of the simulated split", section="data")
    data_seed: int = option(0, help="seed of the simulated split and of the held-out pairs", section="data")
    max_pairs: int | None = option(help="use at most this many pairs", section="data")
    backbone: Path | None = option(help="the federation's pretrained backbone folder (its SHA-256 must be the one "
                                        "the kit seals)", section="data")

    epsilon: float = option(8.0, help="privacy budget ε over all rounds", section="privacy")
    delta: float = option(1e-5, help="δ of the budget", section="privacy")
    accountant: str = option("rdp", help="privacy accountant", section="privacy", choices=ACCOUNTANTS)
    clip: float = option(0.1, help="per-record gradient norm bound", section="privacy")
    personalisation_reserve: float | None = option(
        help=f"share of ε kept from federated training for personalisation (default: the kit's "
             f"personalisation_reserve, else {DEFAULT_RESERVE})", section="privacy")
    trainable: str = option("all", help="what each round's DP training updates: all (attention and MLP adapters, "
                                        "head, fusion layer), no_image_stack, no_mlp, or head (the head and fusion "
                                        "layer only: fewer noisy coordinates; see docs/client-guide.md)",
                            section="privacy", choices=TRAINABLE_SETS)
    insecure_dp: bool = option(False, help="turn DP secure_mode off (seedable PRNG): tests and benchmarks only",
                               section="privacy")

    score_personalised: bool = option(False, help="once personalised, score the server's items with the "
                                                  "personalised model", section="scoring", key="personalised")

    def __post_init__(self) -> None:
        # Refused before anything is loaded or trained, naming the setting.
        if self.epsilon <= 0 or not 0 < self.delta < 1:
            raise ValueError(f"epsilon must be positive and delta in (0, 1), got {self.epsilon}, {self.delta}")
        if self.clip <= 0 or self.alpha <= 0:
            raise ValueError(f"clip and alpha must be positive, got {self.clip}, {self.alpha}")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValueError(f"max_pairs must be at least 1, got {self.max_pairs}")
        if self.personalisation_reserve is not None and not 0 <= self.personalisation_reserve < 1:
            raise ValueError(f"personalisation_reserve must be in [0, 1), got {self.personalisation_reserve}")

    def state_dir(self, kit_path: Path) -> Path:
        """Where the client keeps its ledger and models (default: inside its kit)."""
        return self.state or kit_path / "state"
