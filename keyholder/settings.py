"""The key holder's settings: the one definition of ``fedsecure keyholder``'s flags,
its configuration file's keys (``keyholder.toml``), their defaults and the configuration
reference (:mod:`fedsecure.settings`). Its rules' defaults are the policy's own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedsecure.settings import option
from keyholder.service import KeyHolderPolicy


@dataclass(frozen=True)
class KeyholderSettings:
    """Everything the key holder's operator (ethics board, auditor) sets."""

    kit: Path = option(help="the key holder kit folder", section="keyholder", required=True)
    address: str | None = option(help="host:port to bind (default: the kit's keyholder_address; port 0 = any)",
                                 section="keyholder")
    state: Path | None = option(help="state folder: its decryption log and revocation lists (default: KIT/state)",
                                section="keyholder")
    port_file: Path | None = option(help="write the bound port here once serving", section="keyholder",
                                    in_file=False)
    keys: Path = option(help="the key holder's own key folder, made by `fedsecure keyholder-keygen` (holds the "
                             "CKKS secret)", section="keyholder", required=True)
    quorum: int = option(KeyHolderPolicy.quorum, help="fewest distinct contributors it decrypts a sum of",
                         section="policy")
    sample_fraction: float = option(KeyHolderPolicy.sample_fraction,
                                    help="share of chunks re-added before decrypting (1.0 = all, at least one chunk)",
                                    section="policy")

    def __post_init__(self) -> None:
        self.policy()  # its rules are checked at start, not at the first decryption

    def policy(self) -> KeyHolderPolicy:
        """The rules the key holder enforces (ValueError for a quorum below 2, …)."""
        return KeyHolderPolicy(quorum=self.quorum, sample_fraction=self.sample_fraction)

    def state_dir(self, kit_path: Path) -> Path:
        """Where the key holder keeps its log (default: inside its kit)."""
        return self.state or kit_path / "state"
