"""Where an adapted linear layer sits in a transformer block, whatever the stack calls it.

BERT (the text stack) and ViT (the image stack) name the same layers differently
(``encoder.layer.0.attention.self.query`` vs ``layers.0.attention.q_proj``). FedCola's
gate adds the *other* stack's aggregated adapter to a layer (``W + g·W_aux``), which is
exact only when both stacks use the same frozen FFA-LoRA A for that layer; so A is drawn
from the federation seed by the layer's :class:`Slot` — (block index, role) — never by
its module name, and the aux adapter of a layer is found by the same slot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ATTENTION_ROLES = ("q", "k", "v", "o")
MLP_ROLES = ("up", "down")

# (stack, pattern over the module path inside the stack, role names)
_PATTERNS: tuple[tuple[str, re.Pattern[str], dict[str, str]], ...] = (
    ("text", re.compile(r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)$"),
     {"query": "q", "key": "k", "value": "v"}),
    ("text", re.compile(r"encoder\.layer\.(\d+)\.attention\.output\.(dense)$"), {"dense": "o"}),
    ("text", re.compile(r"encoder\.layer\.(\d+)\.(intermediate)\.dense$"), {"intermediate": "up"}),
    ("text", re.compile(r"encoder\.layer\.(\d+)\.(output)\.dense$"), {"output": "down"}),
    ("image", re.compile(r"layers\.(\d+)\.attention\.(q|k|v|o)_proj$"), {"q": "q", "k": "k", "v": "v", "o": "o"}),
    ("image", re.compile(r"layers\.(\d+)\.mlp\.(fc1|fc2)$"), {"fc1": "up", "fc2": "down"}),
    # CLIP and SigLIP towers (fedsecure/models/towers.py): the same names in both stacks
    *((stack, re.compile(r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj$"),
       {"q": "q", "k": "k", "v": "v", "out": "o"}) for stack in ("text", "image")),
    ("text", re.compile(r"encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)$"), {"fc1": "up", "fc2": "down"}),
)


@dataclass(frozen=True, order=True)
class Slot:
    """An adapted linear layer: its stack, block index and role (q, k, v, o, up, down)."""

    stack: str
    block: int
    role: str

    @property
    def is_attention(self) -> bool:
        """Attention projections are shared across stacks (FedCola); MLPs are not."""
        return self.role in ATTENTION_ROLES

    @property
    def position(self) -> str:
        """The stack-independent part: what the FFA seed and the aux lookup key on."""
        return f"{self.block}:{self.role}"


def slot_of(module_name: str) -> Slot | None:
    """The slot of a module path in a reward model (``text.encoder.layer.0.attention.self.query``,
    optionally followed by ``.lora_A.attn`` or a parameter suffix), or None if the module is
    not an adapted linear layer."""
    stack, _, rest = module_name.partition(".")
    base = re.sub(r"\.(lora_[AB])\..*$", "", rest)
    for s, pattern, roles in _PATTERNS:
        if s != stack:
            continue
        m = pattern.search(base)
        if m:
            return Slot(stack, int(m.group(1)), roles[m.group(2)])
    return None


_ATTENTION_PATHS = {
    "fedsecure": {
        "text": {"q": "encoder.layer.{b}.attention.self.query", "k": "encoder.layer.{b}.attention.self.key",
                 "v": "encoder.layer.{b}.attention.self.value", "o": "encoder.layer.{b}.attention.output.dense"},
        "image": {r: f"layers.{{b}}.attention.{r}_proj" for r in ATTENTION_ROLES},
    },
    **{family: {stack: {r: f"encoder.layers.{{b}}.self_attn.{'out' if r == 'o' else r}_proj"
                        for r in ATTENTION_ROLES} for stack in ("text", "image")}
       for family in ("clip", "siglip")},
}


def attention_module(stack: str, block: int, role: str, *, family: str = "fedsecure") -> str:
    """The module path of an attention projection in a reward model on a ``family``
    backbone (the inverse of :func:`slot_of` for attention slots): what another stack's
    parameters are called. Every member of an adapter group shares one backbone, hence one
    family."""
    try:
        return f"{stack}." + _ATTENTION_PATHS[family][stack][role].format(b=block)
    except KeyError:
        raise ValueError(f"no attention projection {role!r} in a {stack!r} stack of a {family!r} backbone") from None
