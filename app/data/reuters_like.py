"""A Reuters-shaped newswire data set, generated: the Keras course's Reuters model with no download.

`keras.datasets.reuters.load_data(num_words=10000)` gives 8,982 training and 2,246 test newswires,
each a list of word indices (1 marks the start of a text, 2 a word outside the 10,000 most frequent
ones, 3 and up the words by falling frequency), labelled with one of 46 topics of very uneven size.
Real Reuters can't be fetched here, so this makes documents of the same shape, deterministically
from a seed (numpy's PCG64; `SEED` = 20 by default, so every machine makes the same documents):

- vocabulary: 30,979 word ranks (Reuters' full vocabulary size) with Zipf frequencies
  p(rank r) ∝ 1 / (r + 2.7); word ids are rank + 3, and ids ≥ num_words become 2, as load_data;
- topics: the training set has Reuters' own 46 topic sizes (3,159 "earn" wires down to 10), the
  test set the same proportions, 2,246 wires;
- topic words: each topic owns TOPIC_WORDS words drawn from a shared pool of mid-frequency ranks
  (so topics overlap, as "grain" and "wheat" do), used with Zipf weights among themselves; each
  word of a text is a topic word with probability TOPIC_SHARE, otherwise a background word;
- lengths: log-normal around Reuters' (median ~95 words, mean ~145, clipped to 10..2,000),
  counting the start marker.

`python -m app.data.reuters_like --out DIR` writes `reuters_train.json` (a POST /v1/datasets body:
name, task, sequences, targets) and `reuters_test.json` ({"inputs": [...], "labels": [...]}, a
POST /v1/models/{id}/predict body plus the true topics); the README walks through training the
course's model on it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEED = 20
NUM_WORDS = 10_000  # keras' num_words in the course: ids >= this become OOV
VOCABULARY = 30_979  # distinct words in Reuters
START, OOV, FIRST_WORD = 1, 2, 3  # keras.datasets.reuters' start_char, oov_char, index_from
TOPIC_WORDS = 40
TOPIC_POOL = (20, 2_000)  # ranks topic words are drawn from: frequent, but not "the"
TOPIC_SHARE = 0.06
TEST_ROWS = 2_246
# Reuters' training wires per topic (keras.datasets.reuters, topics 0..45): 8,982 in all.
TRAIN_TOPIC_SIZES = (
    55, 432, 74, 3159, 1949, 17, 48, 16, 139, 101, 124, 390, 49, 172, 26, 20, 444, 39, 66, 549,
    269, 100, 15, 41, 62, 92, 24, 15, 48, 19, 45, 39, 32, 11, 50, 10, 49, 19, 19, 24, 36, 30,
    13, 21, 12, 18,
)  # fmt: skip
TOPICS = len(TRAIN_TOPIC_SIZES)


@dataclass(frozen=True)
class Split:
    """Documents as lists of word ids and their topics (0..45)."""

    sequences: list[list[int]]
    labels: list[int]


@dataclass(frozen=True)
class ReutersLike:
    train: Split
    test: Split


def _zipf(n: int, offset: float) -> np.ndarray:
    weights = 1.0 / (np.arange(n) + offset)
    return weights / weights.sum()


def _test_sizes() -> np.ndarray:
    """TEST_ROWS split in the training proportions (largest remainders), every topic at least 1."""
    share = np.array(TRAIN_TOPIC_SIZES) * TEST_ROWS / sum(TRAIN_TOPIC_SIZES)
    sizes = np.maximum(1, np.floor(share).astype(np.int64))
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    for topic in order[: TEST_ROWS - int(sizes.sum())]:
        sizes[topic] += 1
    return sizes


def _documents(
    rng: np.random.Generator, topics: np.ndarray, topic_words: np.ndarray, num_words: int
) -> list[list[int]]:
    rows = topics.shape[0]
    lengths = np.clip(np.round(rng.lognormal(np.log(95.0), 0.9, rows)), 10, 2_000).astype(int)
    starts = np.concatenate(([0], np.cumsum(lengths)))
    total = int(starts[-1])
    owner = np.repeat(np.arange(rows), lengths)  # (tokens,) the document of each word
    background = rng.choice(VOCABULARY, size=total, p=_zipf(VOCABULARY, 2.7))
    pick = rng.choice(TOPIC_WORDS, size=total, p=_zipf(TOPIC_WORDS, 1.0))
    from_topic = rng.random(total) < TOPIC_SHARE
    ranks = np.where(from_topic, topic_words[topics[owner], pick], background)
    ids = ranks + FIRST_WORD
    ids[ids >= num_words] = OOV
    ids[starts[:-1]] = START
    return [ids[a:b].tolist() for a, b in zip(starts[:-1], starts[1:], strict=True)]


def generate(seed: int = SEED, *, num_words: int = NUM_WORDS) -> ReutersLike:
    """The training (8,982) and test (2,246) splits; the same documents for the same seed."""
    rng = np.random.default_rng(seed)
    pool = np.arange(*TOPIC_POOL)
    topic_words = np.stack([rng.choice(pool, TOPIC_WORDS, replace=False) for _ in range(TOPICS)])
    splits = []
    for sizes in (np.array(TRAIN_TOPIC_SIZES), _test_sizes()):
        topics = rng.permutation(np.repeat(np.arange(TOPICS), sizes))
        docs = _documents(rng, topics, topic_words, num_words)
        splits.append(Split(docs, topics.tolist()))
    return ReutersLike(train=splits[0], test=splits[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."), help="directory to write into")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    data = generate(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    train = {
        "name": "reuters-like",
        "task": "classification",
        "sequences": data.train.sequences,
        "targets": data.train.labels,
    }
    (args.out / "reuters_train.json").write_text(json.dumps(train, separators=(",", ":")))
    test = {"inputs": data.test.sequences, "labels": data.test.labels}
    (args.out / "reuters_test.json").write_text(json.dumps(test, separators=(",", ":")))
    tokens = sum(len(s) for s in data.train.sequences)
    print(
        f"{len(data.train.sequences):,} training wires ({tokens:,} word ids) and "
        f"{len(data.test.sequences):,} test wires written to {args.out}/"
    )


if __name__ == "__main__":
    main()
