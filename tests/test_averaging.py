from __future__ import annotations

import pytest
import torch

from mnist_cli.train.averaging import WeightAverage
from mnist_cli.train.models import build_model


def test_the_average_moves_towards_the_network_by_its_weight():
    network = build_model("cnn")
    average = WeightAverage(network, decay=0.99)
    before = {k: v.clone() for k, v in average.state_dict().items()}
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(1.0)
    network.train()(torch.rand(4, 1, 28, 28))  # moves batch norm's statistics and counters
    average.update(step=1000)
    after, now = average.state_dict(), network.state_dict()
    for name, value in after.items():
        if value.is_floating_point():
            expected = before[name] + 0.01 * (now[name] - before[name])
            assert torch.allclose(value, expected, atol=1e-6), name
        else:
            assert torch.equal(value, now[name]), name  # counters are copied
    assert not torch.equal(after["classifier.weight"], now["classifier.weight"])


def test_the_first_steps_are_soon_forgotten_and_the_decay_caps_the_rest():
    average = WeightAverage(build_model("fc"), decay=0.999)
    weights = [average.weight(step) for step in (0, 10, 100, 10_000, 1_000_000)]
    assert weights[0] == pytest.approx(0.9)
    assert weights == sorted(weights, reverse=True)
    assert weights[-1] == pytest.approx(0.001)


def test_the_average_is_its_own_copy_in_eval_mode():
    network = build_model("cnn")
    average = WeightAverage(network, decay=0.9)
    assert not average.network.training
    assert all(not p.requires_grad for p in average.network.parameters())
    assert average.network.classifier.weight.data_ptr() != network.classifier.weight.data_ptr()
