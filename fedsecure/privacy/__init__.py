"""Privacy: accountants, budgets, the signed hash-chained ledger, and the auditor's tools
(independent audit, the server's ledger-heads export, reports)."""
