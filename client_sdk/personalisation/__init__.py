"""TAP's two-stage personalisation (arXiv 2509.26524) of a client's reward model after
the federation: margin-based replacement of shared components, then DP distillation of
the federation's model into the personal one (docs/design.md §4, last step)."""
