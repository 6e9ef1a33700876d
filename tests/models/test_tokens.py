"""Token-list inputs and the category_encoding layer: Keras' CategoryEncoding semantics, the
checks that name the bad row, and training on documents exactly as on their dense encoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import models
from models import SpecError, build, check_compatible, count_params, summary
from models.layers import CategoryEncoding
from models.spec import MAX_NUM_TOKENS, NetworkSpec
from models.tokens import PAD, TokenLists, as_tokens
from models.train import Trainer


def _encode(mode: str, num_tokens: int, docs: list[list[int]]) -> np.ndarray:
    ids = TokenLists.from_lists(docs).padded()
    return CategoryEncoding(num_tokens, mode)(ids).numpy()


# ---------------------------------------------------------------- Keras' semantics


def test_multi_hot_as_keras_documents_it() -> None:
    # keras.layers.CategoryEncoding's docstring: num_tokens=4, multi_hot
    out = _encode("multi_hot", 4, [[0, 1], [0, 0], [1, 2], [3, 1]])
    assert out.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 1]]
    assert out.dtype == np.float32


def test_one_hot_as_keras_documents_it() -> None:
    # layer([3, 2, 0, 1]) with one_hot: a (batch, 1) input is encoded on that dimension
    out = _encode("one_hot", 4, [[3], [2], [0], [1]])
    assert out.tolist() == [[0, 0, 0, 1], [0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0]]


def test_count_adds_up_repeats() -> None:
    # Keras' count example without weights: [[0, 1], [0, 0], [1, 2], [3, 1]]
    out = _encode("count", 4, [[0, 1], [0, 0], [1, 2], [3, 1]])
    assert out.tolist() == [[1, 1, 0, 0], [2, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 1]]


def test_an_empty_document_is_the_all_zero_vector_and_padding_adds_nothing() -> None:
    docs = [[], [2, 2, 0], [5]]
    for mode in ("multi_hot", "count"):
        out = _encode(mode, 6, docs)
        assert out[0].tolist() == [0.0] * 6
        assert out[2].tolist() == [0, 0, 0, 0, 0, 1]
    padded = TokenLists.from_lists(docs).padded()
    assert padded.tolist() == [[PAD, PAD, PAD], [2, 2, 0], [5, PAD, PAD]]


def test_padded_gathers_rows_in_any_order_at_a_fixed_width() -> None:
    tokens = TokenLists.from_lists([[1, 2], [3], [4, 5, 6], []])
    ids = tokens.padded(torch.tensor([2, 0, 3]), width=4)
    assert ids.tolist() == [[4, 5, 6, PAD], [1, 2, PAD, PAD], [PAD] * 4]
    assert tokens.take(1, 3).padded().tolist() == [[3, PAD, PAD], [4, 5, 6]]


# ---------------------------------------------------------------- bad input names the row


@pytest.mark.parametrize(
    ("docs", "message", "loc"),
    [
        ([[1, 2], [3, -4]], "row 1 has token id -4: token ids are integers >= 0", ("x", 1)),
        ([[1, 2.5]], "row 0 has 2.5 at position 1", ("x", 0, 1)),
        ([[1], [True]], "row 1 has True at position 0", ("x", 1, 0)),
        ([[1], "12"], "row 1 is not a list of token ids", ("x", 1)),
        ([[2**70]], "token ids must be below 2**63", ("x",)),
    ],
)
def test_bad_ids_name_the_row(docs: Any, message: str, loc: tuple[Any, ...]) -> None:
    with pytest.raises(SpecError) as err:
        TokenLists.from_lists(docs)
    assert message in err.value.message
    assert err.value.loc == loc


def _spec(num_tokens: int = 20, mode: str = "multi_hot", units: int = 3) -> dict[str, Any]:
    return {
        "layers": [
            {"type": "category_encoding", "num_tokens": num_tokens, "output_mode": mode},
            {"type": "dense", "units": 8, "activation": "relu"},
            {"type": "dropout", "rate": 0.25},
            {"type": "dense", "units": units, "activation": "softmax"},
        ]
    }


def test_an_id_at_or_above_num_tokens_names_the_row_and_the_id() -> None:
    network = NetworkSpec.model_validate(_spec(num_tokens=20))
    with pytest.raises(SpecError) as err:
        as_tokens([[1, 2], [3], [19, 20, 4]], network)
    assert "row 2 has token id 20" in err.value.message
    assert "ids 0..19 (num_tokens 20)" in err.value.message
    assert err.value.loc == ("x", 2)


def test_one_hot_takes_exactly_one_id_per_row() -> None:
    network = NetworkSpec.model_validate(_spec(mode="one_hot"))
    as_tokens([[1], [4]], network)
    for docs, n in (([[1], []], 0), ([[1], [2, 3]], 2)):
        with pytest.raises(SpecError, match=f"row 1 has {n} token ids; one_hot encodes exactly"):
            as_tokens(docs, network)


def test_token_lists_need_an_encoding_network() -> None:
    dense = NetworkSpec.model_validate(
        {"layers": [{"type": "dense", "units": 2, "activation": "softmax", "input_dim": 3}]}
    )
    with pytest.raises(SpecError, match="first layer is"):
        as_tokens([[1, 2]], dense)


# ---------------------------------------------------------------- the spec and summary


def test_the_course_reuters_model_has_keras_counts_with_an_encoding_layer() -> None:
    reuters = _spec(num_tokens=10_000, units=46)
    reuters["layers"][1]["units"] = 256
    reuters["layers"].insert(3, {"type": "dense", "units": 128, "activation": "relu"})
    reuters["layers"].insert(4, {"type": "dropout", "rate": 0.5})
    s = summary(reuters)
    assert [(layer.name, layer.params) for layer in s.layers] == [
        ("category_encoding", 0),
        ("dense", 2_560_256),
        ("dropout", 0),
        ("dense_1", 32_896),
        ("dropout_1", 0),
        ("dense_2", 5_934),
    ]
    assert s.layers[0].output_shape == [None, 10_000]
    assert s.total_params == count_params(reuters) == 2_599_086
    assert sum(p.numel() for p in build(reuters).parameters()) == 2_599_086


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (
            [
                {"type": "dense", "units": 4, "input_dim": 3},
                {"type": "category_encoding", "num_tokens": 4},
            ],
            "can only be the first layer",
        ),
        ([{"type": "category_encoding", "num_tokens": MAX_NUM_TOKENS + 1}], "less than or equal"),
        ([{"type": "category_encoding", "num_tokens": 0}], "greater than or equal to 1"),
        ([{"type": "category_encoding", "num_tokens": 5, "output_mode": "tf_idf"}], "multi_hot"),
        ([{"type": "category_encoding", "num_tokens": 5, "input_dim": 5}], "Extra inputs"),
    ],
)
def test_bad_encoding_specs_are_refused(layers: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        NetworkSpec.model_validate({"layers": layers})


def test_check_compatible_pairs_token_lists_with_encoding_networks_only() -> None:
    training = {"loss": "sparse_categorical_crossentropy"}
    common: dict[str, Any] = {"task": "classification", "n_classes": 3, "rows": 10}
    check_compatible(_spec(), training, n_features=None, **common)
    dense = {"layers": [{"type": "dense", "units": 3, "activation": "softmax", "input_dim": 20}]}
    with pytest.raises(SpecError, match="token lists .* first layer is a dense layer"):
        check_compatible(dense, training, n_features=None, **common)
    with pytest.raises(SpecError, match="reads token lists, but the dataset has 20 feature"):
        check_compatible(_spec(), training, n_features=20, **common)
    with pytest.raises(SpecError, match="set standardize to false"):
        check_compatible(_spec(), {**training, "standardize": True}, n_features=None, **common)


# ---------------------------------------------------------------- training and prediction


def _documents(rows: int, num_tokens: int, seed: int) -> tuple[list[list[int]], np.ndarray]:
    """Documents whose class shows in which ids they hold; some empty, some with repeats."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, rows)
    docs = []
    for label in y:
        n = int(rng.integers(0, 12))
        words = rng.integers(0, num_tokens, n)
        words[: n // 2] = (words[: n // 2] % 5) + 5 * int(label)  # class words 5c..5c+4
        docs.append(words.tolist())
    return docs, y


def _dense(docs: list[list[int]], num_tokens: int, mode: str) -> np.ndarray:
    x = np.zeros((len(docs), num_tokens), dtype=np.float32)
    for i, doc in enumerate(docs):
        for t in doc:
            x[i, t] = x[i, t] + 1 if mode == "count" else 1.0
    return x


TRAINING = {"loss": "sparse_categorical_crossentropy", "optimizer": "rmsprop", "batch_size": 16,
            "epochs": 3, "validation_split": 0.25, "seed": 7}  # fmt: skip


@pytest.mark.parametrize("mode", ["multi_hot", "count"])
def test_training_on_token_lists_is_training_on_their_dense_encoding(mode: str) -> None:
    docs, y = _documents(100, 20, seed=1)
    tokens = models.fit(_spec(20, mode), TRAINING, TokenLists.from_lists(docs), y, device="cpu")
    dense_spec = _spec(20, mode)
    dense_spec["layers"] = [{**dense_spec["layers"][1], "input_dim": 20}, *dense_spec["layers"][2:]]
    dense = models.fit(dense_spec, TRAINING, _dense(docs, 20, mode), y, device="cpu")
    for a, b in zip(tokens.history, dense.history, strict=True):
        da, db = a.as_dict(), b.as_dict()
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert da[key] == pytest.approx(db[key], rel=1e-5), (a.epoch, key)
    a_state, b_state = tokens.module.state_dict(), dense.module.state_dict()
    for (name, pa), pb in zip(a_state.items(), b_state.values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6, msg=name)


def test_the_dataset_stays_token_lists_on_the_trainer() -> None:
    docs, y = _documents(60, 20, seed=2)
    trainer = Trainer(_spec(), TRAINING, docs, y, device="cpu")
    x_train = trainer.epoch_inputs().rows.x
    assert isinstance(x_train, TokenLists) and x_train.rows == 45  # 25% held out
    assert trainer._val is not None and isinstance(trainer._val[0], TokenLists)


def test_predictions_from_token_lists_match_the_dense_network() -> None:
    docs, y = _documents(64, 20, seed=3)
    result = models.fit(_spec(), {**TRAINING, "epochs": 2}, docs, y, device="cpu")
    predictor = models.Predictor(models.save_model(result, _spec()))
    assert predictor.takes_tokens and predictor.n_features == 20
    out = predictor.predict(docs, chunk_rows=7)  # chunks of documents, dropout off
    assert out.shape == (64, 3)
    # the network after its encoding layer, fed the dense vectors directly
    tail = result.module.layers[1:]
    with torch.inference_mode():
        logits = tail(torch.from_numpy(_dense(docs, 20, "multi_hot")))
        expected = torch.softmax(logits, dim=-1)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(predictor.predict(docs), out, rtol=1e-6)
    with pytest.raises(SpecError, match="row 1 has token id 25"):
        predictor.predict([[1], [25]])


def test_rows_of_numbers_from_a_json_parser_become_ids() -> None:
    tokens = TokenLists.from_numbers([[12.0, 7.0], [], [431.0]])
    assert tokens.padded().tolist() == [[12, 7], [PAD, PAD], [431, PAD]]
    rectangular = TokenLists.from_numbers(np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert rectangular.values.tolist() == [1, 2, 3, 4]
    for rows, message in (
        ([[1.0], [2.0, 2.5]], "row 1 has 2.5 at position 1"),
        ([[1.0], [-2.0]], "row 1 has token id -2"),
        ([[float("nan")]], "row 0 has nan"),
    ):
        with pytest.raises(SpecError, match=message):
            TokenLists.from_numbers(rows)
