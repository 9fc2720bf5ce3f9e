from __future__ import annotations

import pytest
import torch

from mnist_cli.train.recipes import default_config, describe_recipe


def test_recipes_and_overrides():
    assert default_config("fc").architecture == "fc"
    assert default_config("cnn", epochs=3, lr=None).epochs == 3
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        default_config("cnn", epochs=0)
    with pytest.raises(ValueError, match="unknown architecture"):
        default_config("vit")


def test_each_device_has_its_recipe_and_the_start_line_says_which():
    cpu, cuda = default_config("cnn", "cpu"), default_config("cnn", "cuda")
    assert cpu.batch_size < cuda.batch_size  # small steps on CPU, CUDA-graph-sized on a GPU
    assert default_config("fc", "cuda") == default_config("fc", "cpu")
    line = describe_recipe(default_config("cnn", "cpu", lr=1e-3, epochs=3), "cpu")
    assert line.startswith("cnn recipe for cpu") and "changed from the recipe: epochs, lr" in line
    assert "changed" not in describe_recipe(cuda, "cuda:0")
    assert describe_recipe(cuda, torch.device("cuda", 1)).startswith("cnn recipe for cuda")
    assert describe_recipe(cpu, torch.device("cpu")).startswith("cnn recipe for cpu")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"lr": float("nan")}, "lr must be a positive finite number"),
        ({"lr": float("inf")}, "lr must be a positive finite number"),
        ({"batch_size": 0}, "batch-size must be at least 1"),
        ({"warmup": 2.0}, "warmup must be between 0 and 1"),
        ({"weight_average": 1.0}, "weight-average must be between 0 and 0.999999"),
        ({"weight_average": -0.5}, "weight-average must be between"),
    ],
)
def test_recipe_values_out_of_range_are_refused(override, fragment):
    with pytest.raises(ValueError, match=fragment):
        default_config("cnn", **override)
