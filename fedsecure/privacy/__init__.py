"""Privacy: accountants, budgets, the signed hash-chained ledger, and the auditor's tools."""
