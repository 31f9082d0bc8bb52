import json

import pytest
import torch

from service.models.vectorizer import OOV, PAD, Vectorizer, standardize, tokenize


def test_standardize_lowercases_strips_breaks_and_punctuation():
    text = "Great MOVIE!<br /><br />It's the best... (really) 10/10"
    assert standardize(text) == "great movie  its the best really 1010"
    assert tokenize(text) == ["great", "movie", "its", "the", "best", "really", "1010"]


def test_fit_orders_by_frequency_with_padding_and_oov_first():
    vec = Vectorizer.fit(["b a b", "c b a", "d"], max_tokens=5, sequence_length=4)
    assert vec.vocabulary == [PAD, OOV, "b", "a", "c"]  # 3 words fit; "c" before "d" (seen first)


def test_unknown_tokens_map_to_oov_and_rows_are_padded():
    vec = Vectorizer([PAD, OOV, "good", "film"], sequence_length=6)
    assert vec.encode("Good film, odd FILM") == [2, 3, 1, 3, 0, 0]


def test_long_texts_are_cut_to_the_sequence_length():
    vec = Vectorizer([PAD, OOV, "a"], sequence_length=3)
    assert vec.encode("a a a a a") == [2, 2, 2]
    ids = vec(["a", "", "a b a b a"])
    assert ids.shape == (3, 3)
    assert ids.tolist() == [[2, 0, 0], [0, 0, 0], [2, 1, 2]]


def test_a_batch_is_each_texts_own_row_in_a_fresh_int64_tensor():
    vec = Vectorizer([PAD, OOV, "a", "b"], sequence_length=4)
    texts = ["b", "", "a b a b a b", "zzz a", "A, B!"]
    ids = vec(texts)
    assert ids.dtype == torch.long and ids.shape == (5, 4)
    assert ids.tolist() == [vec.encode(text) for text in texts]
    again = vec(texts)
    again[0, 0] = 2  # each call owns its memory: writing one leaves the other as it was
    assert ids[0].tolist() == [3, 0, 0, 0] and again[0].tolist() == [2, 0, 0, 0]
    assert vec([]).shape == (0, 4) and vec([]).dtype == torch.long


def test_save_and_load_round_trip(tmp_path):
    vec = Vectorizer([PAD, OOV, "ünïcode", "x"], sequence_length=7)
    vec.save(tmp_path / "vocab.json")
    data = json.loads((tmp_path / "vocab.json").read_text())
    assert data["vocabulary"][:2] == ["", "[UNK]"]
    again = Vectorizer.load(tmp_path / "vocab.json")
    assert again.vocabulary == vec.vocabulary and again.sequence_length == 7


def test_vocabulary_must_start_with_padding_and_oov():
    with pytest.raises(ValueError):
        Vectorizer(["a", "b"], sequence_length=3)
