"""A word-level tokenizer built locally (``tokenizers``) from the easy-VQA vocabulary.

No hub is reachable, so the vocabulary is built from the dataset itself, sorted so
every participant builds the identical tokenizer; it is saved with each model.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from tasks.easyvqa.data import answers, load_records

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIALS = (PAD, UNK, CLS, SEP)
PUNCTUATION = ("?", ".", ",", "!", "'")
_WORD = re.compile(r"[a-z]+")


def easyvqa_vocabulary() -> list[str]:
    """Special tokens, punctuation, then every lowercase word of easy-VQA questions and answers, sorted."""
    words = {w for split in ("train", "test") for r in load_records(split) for w in _WORD.findall(r.question.lower())}
    words.update(answers())
    return [*SPECIALS, *PUNCTUATION, *sorted(words)]


def build_tokenizer(max_length: int = 24) -> Tokenizer:
    """The easy-VQA tokenizer: lowercase, split on whitespace/punctuation, pair template
    ``[CLS] question [SEP] answer [SEP]``, padded and truncated to ``max_length``."""
    vocab = {tok: i for i, tok in enumerate(easyvqa_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])])
    tok.enable_padding(pad_id=vocab[PAD], pad_token=PAD, length=max_length)
    tok.enable_truncation(max_length=max_length)
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write ``tokenizer.json`` (JSON, never pickle)."""
    tok.save(str(path))


def load_tokenizer(path: Path) -> Tokenizer:
    """Read a tokenizer saved by :func:`save_tokenizer`."""
    return Tokenizer.from_file(str(path))
