import json

import pytest

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
