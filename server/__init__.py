"""The aggregation server (the operator's party), one subpackage per concern:

- :mod:`server.rounds`: the round engine, phase planners, admission of submissions, the
  durable SQLite stores and the object store;
- :mod:`server.api`: the gRPC services (thin servicers) and how to start the server;
- :mod:`server.secagg`: homomorphic accumulation of encrypted updates and the client of
  the key holder;
- :mod:`server.align.engine`: the policy VLM, rollouts, GRPO, checkpoints, SFT, evaluation
  and the alignment job.

Imports :mod:`fedsecure` only; never :mod:`client_sdk` or :mod:`keyholder`.
"""
