"""models/memory.py: one training step's activation estimate, from the spec alone."""

from __future__ import annotations

from models.memory import rows_per_step, step_memory, widest

# Issue 18's attack: 262,145 parameters, batch_size "full" on 300,000 rows through 65,536 units.
WIDE = {
    "layers": [
        {"type": "dense", "units": 65_536, "activation": "relu", "input_dim": 2},
        {"type": "dense", "units": 1},
    ]
}
FULL = {"loss": "mse", "batch_size": "full"}
# The course's Reuters network: 10,000 token ids multi-hot encoded -> 64 -> 64 -> 46.
REUTERS = {
    "layers": [
        {"type": "category_encoding", "num_tokens": 10_000, "output_mode": "multi_hot"},
        {"type": "dense", "units": 64, "activation": "relu"},
        {"type": "dense", "units": 64, "activation": "relu"},
        {"type": "dense", "units": 46, "activation": "softmax"},
    ]
}


def test_the_wide_full_batch_step_is_hundreds_of_gigabytes() -> None:
    step = step_memory(WIDE, FULL, rows=300_000)
    # kept: the input 2, relu(x W + b) and x W + b 2 x 65,536, the output 1; backward 2 x 65,536
    assert step.bytes_per_row == 4 * (2 + 2 * 65_536 + 1 + 2 * 65_536)
    assert (step.batch, step.widest, step.widest_layer) == (300_000, 65_536, 0)
    assert step.bytes == 314_576_400_000


def test_the_reuters_network_at_batch_512_is_tens_of_megabytes() -> None:
    step = step_memory(REUTERS, {"loss": "categorical_crossentropy", "batch_size": 512}, rows=8_982)
    assert step.bytes_per_row == 4 * (10_000 + 2 * 64 + 2 * 64 + 2 * 46 + 2 * 10_000)
    assert (step.widest, step.widest_layer) == (10_000, None)  # the encoded input
    assert step.bytes == 62_152_704


def test_a_step_never_holds_more_rows_than_training_has() -> None:
    assert rows_per_step({"loss": "mse", "batch_size": 32}, rows=10) == 10
    assert (
        rows_per_step({"loss": "mse", "batch_size": "full", "validation_split": 0.2}, rows=10) == 8
    )
    assert rows_per_step({"loss": "mse"}, rows=1_000) == 32  # Keras' default batch_size
    assert widest({"layers": [{"type": "dense", "units": 3, "input_dim": 4}]}) == (4, None)
