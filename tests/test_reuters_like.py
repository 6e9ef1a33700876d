"""app/data/reuters_like.py: the generated newswires have Reuters' shape; the seed fixes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.data import reuters_like as R


def test_reuters_shape_and_determinism(tmp_path: Path) -> None:
    data = R.generate()
    train, test = data.train, data.test
    assert (len(train.sequences), len(test.sequences)) == (8_982, 2_246)
    assert np.bincount(train.labels).tolist() == list(R.TRAIN_TOPIC_SIZES)
    assert np.bincount(test.labels, minlength=46).min() >= 1
    lengths = np.array([len(s) for s in train.sequences])
    assert 80 <= np.median(lengths) <= 110 and 120 <= lengths.mean() <= 170  # Reuters: 95, 145
    assert lengths.min() >= 10 and lengths.max() <= 2_000
    ids = np.concatenate([np.asarray(s) for s in train.sequences])
    assert 1.1e6 < ids.size < 1.5e6  # "about 1.3 M integers"
    assert ids.min() == R.START and ids.max() < R.NUM_WORDS
    assert all(s[0] == R.START for s in train.sequences)
    # Zipf: the most frequent word (id 3) far outnumbers a word ranked 1,000th
    counts = np.bincount(ids, minlength=R.NUM_WORDS)
    assert counts[3] > 50 * counts[1_003] > 0 and counts[R.OOV] > 0
    # the same seed makes the same documents; another seed others
    again = R.generate()
    assert again.train.sequences[:50] == train.sequences[:50] and again.test.labels == test.labels
    assert R.generate(seed=21).train.sequences[:50] != train.sequences[:50]
    R.main(["--out", str(tmp_path)])
    body = json.loads((tmp_path / "reuters_train.json").read_text())
    assert body["sequences"] == train.sequences and body["targets"] == train.labels
    assert json.loads((tmp_path / "reuters_test.json").read_text())["labels"] == test.labels


def test_topics_have_their_own_words() -> None:
    # the words a topic's documents use most beyond the background are that topic's own
    data = R.generate()
    y = np.array(data.train.labels)
    earn = np.concatenate(
        [np.asarray(s) for s, t in zip(data.train.sequences, y, strict=True) if t == 3]
    )
    acq = np.concatenate(
        [np.asarray(s) for s, t in zip(data.train.sequences, y, strict=True) if t == 4]
    )
    earn_freq = np.bincount(earn, minlength=R.NUM_WORDS) / earn.size
    acq_freq = np.bincount(acq, minlength=R.NUM_WORDS) / acq.size
    top_earn = set(np.argsort(-(earn_freq - acq_freq))[:10].tolist())
    top_acq = set(np.argsort(-(acq_freq - earn_freq))[:10].tolist())
    assert not top_earn & top_acq
