from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_cli.train.models import ModelSpecError, build_model, default_arguments


def test_fc_is_the_tutorial_net():
    model = build_model("fc")
    sizes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert sizes == [(784, 512), (512, 256), (256, 256), (256, 128), (128, 64), (64, 10)]


@pytest.mark.parametrize("architecture", ["fc", "cnn"])
def test_models_give_ten_logits_per_image(architecture):
    assert build_model(architecture)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_a_net_rebuilt_from_its_stored_arguments_computes_the_same():
    torch.manual_seed(0)
    model = build_model("cnn", default_arguments("cnn")).eval()
    torch.manual_seed(1)  # other initial weights: only the loaded state can make them agree
    clone = build_model("cnn", default_arguments("cnn")).eval()
    clone.load_state_dict(model.state_dict())
    images = torch.rand(4, 1, 28, 28)
    assert torch.equal(clone(images), model(images))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="choose from"):
        build_model("resnet")


def test_the_default_cnn_has_two_convolutions_in_its_last_two_stages():
    model = build_model("cnn")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1, 16), (16, 32), (32, 32), (32, 64), (64, 64)
    ]  # fmt: skip


def test_cnn_arguments_without_convs_build_the_one_conv_per_stage_net_of_older_files():
    model = build_model("cnn", {"channels": [16, 32, 64], "classes": 10})
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 3
    assert "features.2.0.weight" in model.state_dict()  # the key layout older files hold
    assert "features.2.3.weight" not in model.state_dict()


def _layer_kinds(stage: nn.Module) -> list[str]:
    return [type(layer).__name__ for layer in stage]


def test_the_default_cnn_pools_before_normalising_in_every_stage():
    stages = build_model("cnn").features
    assert _layer_kinds(stages[0]) == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert _layer_kinds(stages[2]) == [
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"
    ]  # fmt: skip


def test_cnn_arguments_without_pool_first_pool_last_as_files_written_before_it_did():
    model = build_model("cnn", {"channels": [16, 32, 64], "convs": [1, 2, 2], "classes": 10})
    assert _layer_kinds(model.features[0]) == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert "features.2.4.weight" in model.state_dict()  # BN after the second conv, as saved


@pytest.mark.parametrize("pool_first", [[1, 1, 1], [True, False], "yes", None, [True, None, True]])
def test_bad_pool_orders_are_refused(pool_first):
    arguments = {"channels": [16, 32, 64], "convs": [1, 2, 2], "pool_first": pool_first}
    with pytest.raises(ModelSpecError, match="pool_first"):
        build_model("cnn", {**arguments, "classes": 10})


@pytest.mark.parametrize(
    "convs", [[0, 1, 1], [1, 2], [1, 2, "2"], [1, True, 2], [1, 2, 9], "122", None]
)
def test_bad_conv_counts_are_refused(convs):
    with pytest.raises(ModelSpecError, match="convs"):
        build_model("cnn", {"channels": [16, 32, 64], "convs": convs, "classes": 10})


def test_unknown_argument_names_are_refused():
    with pytest.raises(ModelSpecError, match="are not"):
        build_model("cnn", {"channels": [16, 32, 64], "depth": 2, "classes": 10})
