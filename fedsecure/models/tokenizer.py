"""A subword tokenizer built locally (``tokenizers``) from a task's vocabulary.

No hub is reachable, so the vocabulary comes from the task's own words, sorted so every
participant builds the identical tokenizer; it is saved with each model and each
backbone (JSON, never pickle). A known word is one token; any other word is read as
WordPiece pieces of its characters (letters, digits, punctuation), so free text — a
hospital's own answers — reaches the model instead of collapsing to ``[UNK]``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIALS = (PAD, UNK, CLS, SEP)
PUNCTUATION = ("?", ".", ",", "!", "'")
# Characters an unknown word is spelled with (after lowercasing and stripping accents);
# a word with any other character is one [UNK].
ALPHABET = tuple(string.ascii_lowercase + string.digits + string.punctuation)


def word_vocabulary(words: Iterable[str]) -> list[str]:
    """Special tokens, punctuation, then the distinct lowercase ``words``, sorted: the
    token list every party derives identically from a task's words."""
    fixed = set(SPECIALS) | set(PUNCTUATION)
    return [*SPECIALS, *PUNCTUATION, *sorted({w.lower() for w in words} - fixed)]


def subword_vocabulary(words: Iterable[str]) -> list[str]:
    """:func:`word_vocabulary`, then every character of :data:`ALPHABET` that is not yet
    a token and its continuation piece ``##c``: the words keep their ids, and any word
    spelled in the alphabet can be encoded."""
    head = word_vocabulary(words)
    known = set(head)
    return [*head, *(c for c in ALPHABET if c not in known), *(f"##{c}" for c in ALPHABET)]


def build_tokenizer(max_length: int = 24, *, words: Iterable[str]) -> Tokenizer:
    """A WordPiece tokenizer over ``words`` (:func:`subword_vocabulary`): accents stripped,
    lowercase, split on whitespace/punctuation, pair template ``[CLS] question [SEP]
    answer [SEP]``, padded and truncated to ``max_length``; a known word is one token, any
    other is spelled in pieces."""
    vocab = {tok: i for i, tok in enumerate(subword_vocabulary(words))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
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
