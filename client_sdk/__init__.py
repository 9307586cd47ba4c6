"""The client SDK embedded by hospitals and banks: outbound-only, signed submissions.

Imports :mod:`fedsecure` only; never :mod:`server` or :mod:`keyholder`.
"""

from client_sdk.client import ClientRunSummary, FederatedClient
from typing import Any

from client_sdk.outcomes import Handler, Outcome, Scores, TaskContext, Update

__all__ = ["ClientReport", "ClientRunSummary", "FederatedClient", "Handler", "Outcome", "Scores", "TaskContext",
           "Update", "join_federation"]


def __getattr__(name: str) -> Any:
    """``join_federation`` and ``ClientReport`` load torch: imported when first asked for,
    so a program that only speaks the protocol does not pay for it."""
    if name in ("join_federation", "ClientReport"):
        from client_sdk import join

        return getattr(join, name)
    raise AttributeError(f"module 'client_sdk' has no attribute {name!r}")
