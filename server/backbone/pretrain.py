"""``fedsecure backbone pretrain``: the operator pretrains the federation's image and text
stacks on the server's own public data, once, and distributes the folder; its digest is
sealed in every kit (:mod:`fedsecure.models.backbone`).

Data: only the server's public labelled parts — pretraining, router, prompt pool, seed
set (:func:`fedsecure.task.public_labelled`: disjoint by image from every
client's share and from the reward-evaluation part: 1,000 images, where the ``pretrain``
part alone has 500; the shape probe after 600 steps moves between 0.50 and 0.62 from run
to run on either, 0.80 once at 1,200 steps). Objectives:
- image stack: predict each attribute the task labels (:meth:`fedsecure.task.Task.image_labels`:
  e.g. colour and shape taken from the task's *public* colour and shape questions, or the
  count and what sits in each third) from the image's CLS feature (the server's own
  labels; no client data). Measured before this choice: a frozen random
  stack carries no such feature, and the clients' reward models then rank answers at
  chance on public questions;
- text stack: masked-token prediction (15 %) on the public questions with their answers.
The reward models still have to learn, from the clients' private preference pairs, which
answer a question wants; the federation's part is that judgement, measured on the
reward-evaluation questions.

Each stack is measured on the reward-evaluation part with a linear probe (ridge
regression on frozen CLS features, images split in halves): each attribute's accuracy,
and masked-token accuracy, before and after pretraining; the manifest records them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedsecure.data.images import load_image
from fedsecure.models.backbone import (
    BackboneShape,
    build_stacks,
    save_backbone,
    shape_dict,
)
from fedsecure.models.encoding import pixels
from fedsecure.models.tokenizer import train_tokenizer
from fedsecure.task import Example, Task, public_labelled

log = logging.getLogger("fedsecure.server.backbone")

MASK_RATE = 0.15


RECIPE = "task-labelled-images+trained-wordpiece"
"""Names what the defaults pretrain on and how; a cached backbone of another recipe is not reused."""


@dataclass(frozen=True)
class PretrainSettings:
    """What to pretrain, on which public part, for how long."""

    out: Path
    shape: BackboneShape = BackboneShape()
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    data_seed: int = 0
    threads: int = 2
    vocab_size: int = 2000  # of the WordPiece tokenizer trained on the public text (plus one piece per character)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.learning_rate <= 0 or self.threads < 1:
            raise ValueError("steps >= 1, batch_size >= 2, a positive learning rate and threads >= 1 are needed")


@dataclass(frozen=True)
class ImageSet:
    """Images (uint8) with one label tensor per attribute the task names
    (:meth:`fedsecure.task.Task.image_labels`; -1 where no public example tells), the
    classes of each attribute, and whether flips and turns keep the labels."""

    images: torch.Tensor
    labels: dict[str, torch.Tensor]
    classes: dict[str, tuple[str, ...]]
    turns: bool = True


def image_set(records: Sequence[Example], task: Task, *,
              classes: dict[str, tuple[str, ...]] | None = None) -> ImageSet:
    """One row per image of ``records``, labelled by ``task``; ``classes`` (a training
    set's) fixes each attribute's class order, else the sorted values seen here."""
    labels: dict[str, dict[str, str]] = {}
    for r in records:
        labels.setdefault(r.image, {}).update(task.image_labels(r))
    if classes is None:
        names = sorted({a for lab in labels.values() for a in lab})
        classes = {a: tuple(sorted({lab[a] for lab in labels.values() if a in lab})) for a in names}
    # Folder, then names by length and text: numbered files in their numeric order.
    keys = sorted(labels, key=lambda path: (str(Path(path).parent), len(Path(path).name), Path(path).name))
    images = torch.from_numpy(np.stack([load_image(k) for k in keys])).permute(0, 3, 1, 2).contiguous()
    index = {a: {v: i for i, v in enumerate(values)} for a, values in classes.items()}
    return ImageSet(images, {a: torch.tensor([index[a].get(labels[k].get(a, ""), -1) for k in keys])
                             for a in classes}, dict(classes), task.turns_keep_labels)


def augment(images: torch.Tensor, gen: torch.Generator, *, turns: bool = True) -> torch.Tensor:
    """A random flip and quarter turn per image where they keep the labels (a shape's
    colour and kind: 8 views of every public image); else the images as they are."""
    if not turns:
        return images
    out = images.clone()
    flips = torch.rand(len(images), generator=gen) < 0.5
    out[flips] = out[flips].flip(-1)
    turns_ = torch.randint(4, (len(images),), generator=gen)
    for k in range(1, 4):
        sel = turns_ == k
        out[sel] = torch.rot90(out[sel], k, dims=(-2, -1))
    return out


def label_loss(heads: nn.ModuleDict, features: torch.Tensor, data: ImageSet, rows: torch.Tensor) -> torch.Tensor:
    """Sum over the attributes of the cross-entropy of each attribute's head (unlabelled
    rows ignored; an attribute without a labelled row in the batch adds nothing)."""
    loss = features.new_zeros(())
    for a in data.classes:
        labels = data.labels[a][rows]
        if bool((labels >= 0).any()):
            loss = loss + F.cross_entropy(heads[a](features), labels, ignore_index=-1)
    return loss


def public_text(records: Sequence[Example]) -> list[str]:
    """The text the tokenizer is trained on: each public example's question, its answer
    and its wrong answers (a free-text task's), in the records' order."""
    return [t for r in records for t in (r.question, r.answer, *r.rejected)]


def text_ids(records: Sequence[Example], tokenizer: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of "question [SEP] answer" for each record."""
    enc = tokenizer.encode_batch([(r.question, r.answer) for r in records])  # type: ignore[attr-defined]
    return (torch.tensor([e.ids for e in enc], dtype=torch.long),
            torch.tensor([e.attention_mask for e in enc], dtype=torch.long))


def _mask(ids: torch.Tensor, attention: torch.Tensor, mask_id: int, special: int,
          gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of real (non-special) tokens; labels -100 elsewhere."""
    chosen = (torch.rand(ids.shape, generator=gen) < MASK_RATE) & (attention > 0) & (ids >= special)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return torch.where(chosen, torch.full_like(ids, mask_id), ids), labels


def _cls(image_stack: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([image_stack(pixel_values=pixels(images[i:i + batch])).last_hidden_state[:, 0]
                          for i in range(0, len(images), batch)])


def linear_probe(features: torch.Tensor, labels: torch.Tensor, classes: int, *, ridge: float = 1e-2) -> float:
    """Accuracy of a ridge-regression probe fitted on the first half of the labelled rows
    and tested on the second (closed form: deterministic)."""
    keep = labels >= 0
    x, y = features[keep].double(), labels[keep]
    half = len(y) // 2
    if half < classes:
        raise ValueError("too few labelled rows for a probe")
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    targets = F.one_hot(y[:half], classes).double()
    a = x[:half]
    w = torch.linalg.solve(a.T @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype), a.T @ targets)
    return float(((x[half:] @ w).argmax(1) == y[half:]).double().mean())


def masked_accuracy(text_stack: nn.Module, mlm_head: nn.Module, ids: torch.Tensor, attention: torch.Tensor,
                    mask_id: int, special: int, seed: int) -> float:
    """Share of masked tokens the text stack (with its MLM head) restores."""
    gen = torch.Generator().manual_seed(seed)
    masked, labels = _mask(ids, attention, mask_id, special, gen)
    with torch.no_grad():
        logits = mlm_head(text_stack(input_ids=masked, attention_mask=attention).last_hidden_state)
    hit = labels != -100
    return float((logits.argmax(-1)[hit] == labels[hit]).double().mean())


def measure(image_stack: nn.Module, text_stack: nn.Module, mlm_head: nn.Module, evaluation: ImageSet,
            eval_text: tuple[torch.Tensor, torch.Tensor], mask_id: int, special: int) -> dict[str, float]:
    """Probe accuracy of each image attribute (``probe_<attribute>``) and masked-token
    accuracy on the evaluation part."""
    image_stack.eval()
    text_stack.eval()
    feats = _cls(image_stack, evaluation.images)
    probes = {f"probe_{a}": round(linear_probe(feats, evaluation.labels[a], len(values)), 4)
              for a, values in evaluation.classes.items()}
    return {**probes, "masked_token": round(masked_accuracy(text_stack, mlm_head, *eval_text, mask_id, special,
                                                            seed=1), 4)}


def pretrain_backbone(settings: PretrainSettings, *, task: Task) -> dict[str, object]:
    """Pretrain on ``task``'s public data, measure before and after, save; return the
    manifest (with the digest)."""
    torch.set_num_threads(settings.threads)
    started = time.monotonic()
    train_records = public_labelled(task, seed=settings.data_seed)
    # The tokenizer every client will read text with, trained on the same public text the
    # text stack learns from (questions, right and wrong answers), sealed in the folder.
    texts = public_text(train_records)
    tok = train_tokenizer(texts, max_length=settings.shape.max_length, vocab_size=settings.vocab_size)
    vocab = tok.get_vocab()
    mask_id, special = vocab["[UNK]"], len(("[PAD]", "[UNK]", "[CLS]", "[SEP]"))  # [UNK] doubles as [MASK]
    eval_records = task.server_part("reward_eval", seed=settings.data_seed)
    train_images = image_set(train_records, task)
    eval_images = image_set(eval_records, task, classes=train_images.classes)
    train_text, eval_text = text_ids(train_records, tok), text_ids(eval_records, tok)
    image, text = build_stacks(settings.shape, tok.get_vocab_size(), seed=settings.seed)
    h = settings.shape.hidden
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed + 1)
        heads = nn.ModuleDict({**{a: nn.Linear(h, len(v)) for a, v in train_images.classes.items()},
                               "mlm": nn.Linear(h, tok.get_vocab_size())})
    before = measure(image, text, heads["mlm"], eval_images, eval_text, mask_id, special)
    params = [*image.parameters(), *text.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=settings.learning_rate)
    gen = torch.Generator().manual_seed(settings.seed + 2)
    for step in range(settings.steps):
        image.train()
        text.train()
        i = torch.randint(len(train_images.images), (settings.batch_size,), generator=gen)
        cls = image(pixel_values=pixels(augment(train_images.images[i], gen,
                                                turns=train_images.turns))).last_hidden_state[:, 0]
        loss = label_loss(heads, cls, train_images, i)
        j = torch.randint(len(train_text[0]), (settings.batch_size,), generator=gen)
        masked, labels = _mask(train_text[0][j], train_text[1][j], mask_id, special, gen)
        logits = heads["mlm"](text(input_ids=masked, attention_mask=train_text[1][j]).last_hidden_state)
        loss = loss + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == settings.steps:
            log.info("backbone pretraining: step %d/%d, loss %.3f", step + 1, settings.steps, loss.item())
    after = measure(image, text, heads["mlm"], eval_images, eval_text, mask_id, special)
    manifest: dict[str, object] = {
        "shape": shape_dict(settings.shape), "seed": settings.seed, "steps": settings.steps, "recipe": RECIPE,
        "learning_rate": settings.learning_rate,
        "objective": {"image": "classification of the image's CLS feature by each attribute the task labels "
                               f"({', '.join(train_images.classes)}), from the server's public examples",
                      "text": f"masked-token prediction ({MASK_RATE:.0%}) on public questions with their answers"},
        "data": {"parts": "pretrain, router, public pool, seed set", "split_seed": settings.data_seed, "images": len(train_images.images),
                 "questions": len(train_records), "client_data": False},
        "tokenizer": {"kind": "WordPiece trained on the public text (tokenizers)", "texts": len(texts),
                      "vocab_size": tok.get_vocab_size()},
        "measured_on": {"part": "reward_eval", "images": len(eval_images.images)},
        "before": before, "after": after, "seconds": round(time.monotonic() - started, 1)}
    image.eval()
    text.eval()
    digest = save_backbone(settings.out, image=image, text=text, tokenizer=tok, manifest=manifest)
    return {**manifest, "sha256": digest}
