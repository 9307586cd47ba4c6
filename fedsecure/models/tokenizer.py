"""A word-level tokenizer built locally (``tokenizers``) from a task's vocabulary.

No hub is reachable, so the vocabulary comes from the task's own text, sorted so every
participant builds the identical tokenizer; it is saved with each model and each
backbone (JSON, never pickle).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIALS = (PAD, UNK, CLS, SEP)
PUNCTUATION = ("?", ".", ",", "!", "'")


def word_vocabulary(words: Iterable[str]) -> list[str]:
    """Special tokens, punctuation, then the distinct lowercase ``words``, sorted: the
    token list every party derives identically from a task's words."""
    fixed = set(SPECIALS) | set(PUNCTUATION)
    return [*SPECIALS, *PUNCTUATION, *sorted({w.lower() for w in words} - fixed)]


def build_tokenizer(max_length: int = 24, *, words: Iterable[str]) -> Tokenizer:
    """A word tokenizer over ``words`` (:func:`word_vocabulary`): lowercase, split on
    whitespace/punctuation, pair template ``[CLS] question [SEP] answer [SEP]``, padded
    and truncated to ``max_length``; a word outside the vocabulary becomes ``[UNK]``."""
    vocab = {tok: i for i, tok in enumerate(word_vocabulary(words))}
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
