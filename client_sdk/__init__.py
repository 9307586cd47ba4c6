"""The client SDK embedded by hospitals and banks: outbound-only, signed submissions.

Imports :mod:`fedsecure` only; never :mod:`server` or :mod:`keyholder`.
"""

from client_sdk.client import ClientRunSummary, FederatedClient
from client_sdk.outcomes import Handler, Outcome, Scores, TaskContext, Update

__all__ = ["ClientRunSummary", "FederatedClient", "Handler", "Outcome", "Scores", "TaskContext", "Update"]
