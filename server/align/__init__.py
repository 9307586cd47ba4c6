"""The ALIGN stage, in one package: the phase planner that drives it (``planner.py``), the
clients' score sessions (``sessions.py``), the reward GRPO calls each step — per-client
normalisation, capability masks, the router and its competitors, fusion (``reward.py``,
``fusion.py``, ``router.py``, ``combiners.py``, ``features.py``) — the router's preference lists,
curated and from the policy's own samples (``preferences.py``), the stage itself with its
monitor and promotion gate (``stage.py``, ``promotion.py``), the stage built for a task
(``vqa_stage.py``), and the policy-training engine it runs (``engine/``: GRPO, rollouts,
policy, evaluation; also usable alone by ``fedsecure align``). Work crosses between the
event loop and the worker threads only in ``threads.py``."""
