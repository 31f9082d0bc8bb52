"""`python -m service evaluate` and the aclImdb reader, on a small aclImdb-layout sample."""

import gzip
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from service.models.artifacts import NAMES
from service.models.registry import ModelRegistry
from service.training.data import read_aclimdb, split_reviews

FIXTURE = Path(__file__).parent / "fixtures" / "imdb_test_sample.jsonl.gz"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def aclimdb(tmp_path_factory) -> Path:
    """The fixture's reviews written back as aclImdb/test/{pos,neg}/N_R.txt (plus a train
    copy and an unsup file that must be ignored), as a directory."""
    root = tmp_path_factory.mktemp("imdb") / "aclImdb"
    with gzip.open(FIXTURE, "rt") as handle:
        rows = [json.loads(line) for line in handle]
    for split in ("train", "test"):
        for row in rows:
            _, polarity, name = row["id"].split("/")
            path = root / split / polarity / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(row["text"], encoding="utf-8")
    (root / "train" / "unsup").mkdir()
    (root / "train" / "unsup" / "1_0.txt").write_text("unlabelled")
    return root


def test_reader_takes_a_directory_and_a_tarball_alike(aclimdb, tmp_path):
    tarball = tmp_path / "aclImdb_v1.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(aclimdb, arcname="aclImdb")
    from_dir, from_tar = read_aclimdb(aclimdb), read_aclimdb(tarball)
    assert len(from_dir) == 600  # 300 test + 300 train; unsup ignored
    assert [(r.key, r.text, r.label) for r in from_dir] == [
        (r.key, r.text, r.label) for r in from_tar
    ]
    assert {r.label for r in from_dir if "/pos/" in r.key} == {1}


def test_split_is_seeded_and_keeps_test_whole(aclimdb):
    reviews = read_aclimdb(aclimdb)
    first, again = split_reviews(reviews, 0.2, 7), split_reviews(reviews, 0.2, 7)
    other = split_reviews(reviews, 0.2, 8)
    assert [r.key for r in first.validation] == [r.key for r in again.validation]
    assert [r.key for r in first.validation] != [r.key for r in other.validation]
    assert len(first.validation) == 60 and len(first.train) == 240 and len(first.test) == 300


def test_reader_refuses_a_path_without_reviews(tmp_path):
    with pytest.raises(ValueError, match="no aclImdb"):
        read_aclimdb(tmp_path)


def _evaluate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "service", "evaluate", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_evaluate_json_for_the_moe_reports_routing(aclimdb):
    done = _evaluate("--model", "switch-moe", "--data", str(aclimdb), "--limit", "100", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "switch-moe" and result["n"] == 100
    assert 0.75 <= result["accuracy"] <= 1.0
    assert result["params"] > 0 and result["size_bytes"] > 0
    assert len(result["expert_share"]) == 10 and abs(sum(result["expert_share"]) - 1) < 1e-3
    assert 0.0 <= result["drop_rate"] < 1.0


def test_evaluate_prints_a_table_without_json(aclimdb):
    done = _evaluate("--model", "sentiment-cnn-int8", "--data", str(aclimdb), "--limit", "50")
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(None, 1) for line in done.stdout.strip().splitlines())
    assert lines["model"] == "sentiment-cnn-int8" and lines["n"] == "50"
    assert lines["quantization"] == "int8"
    # Progress goes to stderr: what is read, what is evaluated, a bar that reaches the end.
    assert f"reading the aclImdb test reviews from {aclimdb}" in done.stderr
    assert "evaluating sentiment-cnn-int8 on 50 test reviews" in done.stderr
    assert "evaluate sentiment-cnn-int8: 100%" in done.stderr and "50/50" in done.stderr


def test_evaluate_unknown_model_fails_with_a_clear_message(aclimdb):
    done = _evaluate("--model", "nope", "--data", str(aclimdb), "--json")
    assert done.returncode != 0
    assert "unknown model 'nope'" in done.stderr


def _hypo_sentences(path: Path) -> Path:
    """A tiny HYPO-shaped file: groups of a hyperbole, a paraphrase and a literal use."""
    rows = []
    for group in range(40):
        rows += [
            {"text": f"I told you {group} million times", "label": 1, "group": group},
            {"text": f"I told you {group} times", "label": 0, "group": group},
            {"text": f"It costs {group} million dollars", "label": 0, "group": group},
        ]
    with gzip.open(path, "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def test_train_writes_loadable_artifacts_and_the_adapter_with_cards(aclimdb, tmp_path):
    out = tmp_path / "artifacts"
    hypo = _hypo_sentences(tmp_path / "hypo.jsonl.gz")
    done = subprocess.run(
        [sys.executable, "-m", "service", "train", "--data", str(aclimdb), "--out", str(out),
         "--cnn-epochs", "1", "--moe-epochs", "1", "--hyperbole-data", str(hypo),
         "--hyperbole-epochs", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "epoch 1" in done.stderr  # progress is shown
    assert "hyperbole lora epoch 1" in done.stderr
    registry = ModelRegistry.load(root=out)
    assert registry.names() == [*NAMES, "hyperbole-lora"]
    adapter = registry.info("hyperbole-lora")
    assert adapter.base == "sentiment-cnn"
    assert (
        adapter.card["base"]["weights_sha256"]
        == registry.info("sentiment-cnn").card["weights_sha256"]
    )
    assert adapter.card["data"]["test"] + adapter.card["data"]["train"] < 120
    test = [r for r in read_aclimdb(aclimdb) if r.split == "test"]
    for name in NAMES:
        card = registry.info(name).card
        assert card["command"].startswith("python -m service train --data ")
        assert card["test"]["n"] == 300 and card["data"]["validation"] == 60
        if name == "sentiment-cascade":  # no training of its own: a threshold on validation
            assert card["validation"]["n"] == 60 and 0.5 <= card["threshold"] <= 1.0
        else:
            assert len(card["training"]["history"]) >= 1
        # The card's test accuracy is what the written artifact does on those 300 reviews,
        # measured again here (to one review: a probability within float rounding of 0.5 may
        # land on either side in a batch of another size).
        predictions = registry.predict(name, [r.text for r in test])
        labels = [int(p.label == "positive") for p in predictions]
        correct = sum(label == r.label for label, r in zip(labels, test, strict=True))
        assert abs(correct / len(test) - card["test"]["accuracy"]) <= 1 / len(test), name
    assert registry.info("sentiment-cnn-int8").quantization == "int8"
    assert "expert_share" in registry.info("switch-moe").card["test"]
