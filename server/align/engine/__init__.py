"""The alignment engine: a policy VLM with its KL reference, batched rollouts, the GRPO
objective and update, checkpoints, SFT warm start, exact-match evaluation, and the job
that runs them (``fedsecure align``). Independent of the round engine."""
