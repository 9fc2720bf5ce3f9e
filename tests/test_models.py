from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_cli.models import build_model, default_arguments


def test_fc_is_the_tutorial_net():
    model = build_model("fc")
    sizes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert sizes == [(784, 512), (512, 256), (256, 256), (256, 128), (128, 64), (64, 10)]


@pytest.mark.parametrize("architecture", ["fc", "cnn"])
def test_models_give_ten_logits_per_image(architecture):
    assert build_model(architecture)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_rebuilt_from_stored_arguments():
    arguments = default_arguments("cnn")
    model = build_model("cnn", arguments)
    clone = build_model("cnn", arguments)
    clone.load_state_dict(model.state_dict())


def test_unknown_architecture():
    with pytest.raises(ValueError, match="choose from"):
        build_model("resnet")
