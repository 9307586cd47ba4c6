"""Subword tokenizers built locally with ``tokenizers`` (no hub is reachable).

Two ways to one format (WordPiece; accents stripped, lowercase; ``[CLS] prompt [SEP]
response [SEP]``), saved as JSON (never pickle) with each model and each backbone:

- :func:`train_tokenizer`: **trained on public text** — what the operator's backbone
  pretraining does with the server's public questions and answers, and seals in the
  backbone folder, so every client reads text with the backbone's own tokenizer;
- :func:`build_tokenizer`: derived from a task's word list, sorted so every participant
  builds the identical one without a backbone (tests' tiny models, the simulator).

Either way every character of :data:`ALPHABET` and its continuation piece is a token, so
any word spelled in it — a hospital's own free text — is read as pieces instead of
collapsing to ``[UNK]``.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

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


def _assemble(vocab: dict[str, int], max_length: int) -> Tokenizer:
    """The WordPiece tokenizer over ``vocab`` with this module's normalisation, pair
    template, padding and truncation."""
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])])
    tok.enable_padding(pad_id=vocab[PAD], pad_token=PAD, length=max_length)
    tok.enable_truncation(max_length=max_length)
    return tok


def build_tokenizer(max_length: int = 24, *, words: Iterable[str]) -> Tokenizer:
    """A WordPiece tokenizer over ``words`` (:func:`subword_vocabulary`): a known word is
    one token, any other is spelled in pieces."""
    return _assemble({tok: i for i, tok in enumerate(subword_vocabulary(words))}, max_length)


def train_tokenizer(texts: Iterable[str], *, max_length: int, vocab_size: int = 2000) -> Tokenizer:
    """A WordPiece tokenizer trained on ``texts`` (public text only: it is sealed in the
    backbone every client reads with) by ``tokenizers``' WordPiece trainer, about
    ``vocab_size`` tokens plus a continuation piece for every character; every character
    of :data:`ALPHABET` is in it, so no word spelled in it becomes ``[UNK]``. The special
    tokens are ids 0-3 (:data:`SPECIALS`), as :func:`build_tokenizer`'s. The same texts
    give the same tokenizer."""
    if vocab_size < len(SPECIALS) + 2 * len(ALPHABET):
        raise ValueError(f"vocab_size {vocab_size} cannot hold the specials and the alphabet's pieces")
    learner = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
    learner.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    learner.pre_tokenizer = pre_tokenizers.Whitespace()
    texts = list(texts)
    normalise = learner.normalizer.normalize_str
    characters = sorted(set(ALPHABET) | {c for t in texts for c in normalise(t) if not c.isspace()})
    # Every continuation piece is declared up front: the trainer otherwise creates them in
    # hash-map order, and since merges break count ties by token id, two trainings on the
    # same text gave different vocabularies (huggingface/tokenizers#1794). Declared, their
    # ids are fixed and the training is reproducible. The characters themselves it sorts.
    pieces = [f"##{c}" for c in characters]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size + len(pieces), min_frequency=1,
                                        special_tokens=[*SPECIALS, *pieces], initial_alphabet=characters,
                                        show_progress=False, continuing_subword_prefix="##")
    learner.train_from_iterator(texts, trainer=trainer)
    learned = learner.get_vocab()
    vocab = {t: i for i, t in enumerate(sorted(learned, key=learned.__getitem__))}
    if [vocab[t] for t in SPECIALS] != list(range(len(SPECIALS))):
        raise AssertionError("the trainer did not put the special tokens first")  # the masking relies on it
    return _assemble(vocab, max_length)


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write ``tokenizer.json`` (JSON, never pickle)."""
    tok.save(str(path))


def load_tokenizer(path: Path) -> Tokenizer:
    """Read a tokenizer saved by :func:`save_tokenizer`."""
    return Tokenizer.from_file(str(path))
