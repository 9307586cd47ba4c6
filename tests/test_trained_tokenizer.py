"""The backbone's own tokenizer (issue 25 item 2): WordPiece trained on public text with
the ``tokenizers`` library, reproducible, special tokens first, every character of the
alphabet a token so free text never collapses to [UNK]."""

from __future__ import annotations

import pytest

from fedsecure.models.tokenizer import ALPHABET, CLS, SEP, SPECIALS, UNK, train_tokenizer

TEXTS = [f"the {c} {s} is on the {p}." for c in ("red", "blue", "green") for s in ("circle", "square", "triangle")
         for p in ("left", "right", "middle")] + ["how many shapes are there?", "there are two shapes."] * 3


def test_training_is_reproducible_and_puts_the_specials_first() -> None:
    vocabularies = [train_tokenizer(TEXTS, max_length=24, vocab_size=300).get_vocab() for _ in range(5)]
    assert all(v == vocabularies[0] for v in vocabularies)  # tokenizers#1794 worked around
    assert [vocabularies[0][t] for t in SPECIALS] == [0, 1, 2, 3]


def test_frequent_words_are_whole_tokens_and_unseen_text_is_spelled() -> None:
    tok = train_tokenizer(TEXTS, max_length=32, vocab_size=300)
    vocab = tok.get_vocab()
    assert {"circle", "triangle", "shapes", "left"} <= set(vocab)
    assert all(c in vocab and f"##{c}" in vocab for c in ALPHABET)
    enc = tok.encode("Is the xylophone 3-sided?", "Ça va: très bien!")
    assert UNK not in enc.tokens and enc.tokens[0] == CLS and enc.tokens.count(SEP) == 2
    assert len(enc.ids) == 32  # padded to the backbone's length
    assert tok.encode("the red circle").tokens[1:4] == ["the", "red", "circle"]


def test_a_vocabulary_too_small_for_the_alphabet_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        train_tokenizer(TEXTS, max_length=24, vocab_size=10)
