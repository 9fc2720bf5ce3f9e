from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mnist_cli.infer.evaluation import (
    build_report,
    calibration_error,
    evaluate_model,
    save_error_grid,
)


def test_report_counts_from_logits():
    labels = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 2])
    logits = np.eye(10)[predicted]
    report = build_report("m", labels, logits, loss=0.5)
    assert report.accuracy == 0.8 and report.errors == 1
    assert report.confusion[0][:3] == [1, 1, 0] and report.confusion[1][:3] == [0, 2, 0]
    one = report.classes[1]
    assert (one.precision, one.recall, one.support) == (2 / 3, 1.0, 2)
    assert report.classes[0].recall == 0.5
    assert report.to_dict()["classes"][2]["f1"] == 1.0


def test_calibration_error_is_the_weighted_gap_between_confidence_and_accuracy():
    def top(p: float, digit: int) -> list[float]:  # digit with probability p, the rest shared
        row = [(1 - p) / 9] * 10
        row[digit] = p
        return row

    labels = np.array([0, 0, 0, 0, 1, 1])
    # Four answers at 0.95 (three right: accuracy 0.75), two at 0.5 (both right).
    probabilities = np.array([top(0.95, 0)] * 3 + [top(0.95, 3)] + [top(0.5, 1)] * 2)
    expected = 4 / 6 * abs(0.75 - 0.95) + 2 / 6 * abs(1.0 - 0.5)
    assert calibration_error(probabilities, labels) == pytest.approx(expected)
    calibrated = np.array([top(0.75, 0)] * 3 + [top(0.75, 3)])  # 75% sure, 75% right
    assert calibration_error(calibrated, labels[:4]) == pytest.approx(0.0)


def test_evaluate_and_save_the_errors(trained, tmp_path):
    report, wrong = evaluate_model(
        trained["checkpoint"], data_dir=trained["data_dir"], device="cpu"
    )
    assert report.images == 1000
    assert sum(map(sum, report.confusion)) == 1000
    assert len(wrong.labels) == report.errors
    assert (wrong.labels != wrong.predicted).all()
    assert len(wrong.confidence) == report.errors and (wrong.confidence > 0).all()
    assert (wrong.confidence <= 1).all()  # the probability of each wrong answer
    assert [m.path for m in report.mistakes] == wrong.names  # MNIST's named t10k[index]
    assert all(name.startswith("t10k[") for name in wrong.names)
    grid = save_error_grid(wrong, tmp_path / "errors.png")
    width, height = Image.open(grid).size
    # three caption lines: the labels, the confidence, which image it is
    assert width == 12 * 84 and height == -(-report.errors // 12) * (84 + 51)


def test_history_has_whole_epochs_and_accuracy_stops_at_100(trained):
    from mnist_cli.train.checkpoints import load_checkpoint
    from mnist_cli.train.plots import history_figure

    history = load_checkpoint(trained["out_dir"] / "last.pt").state.history
    for rows in (history[:1], history):
        losses, accuracy = history_figure(rows, train_loss="train (smoothed)").axes
        for axes in (losses, accuracy):
            ticks = [t for t in axes.get_xticks() if axes.get_xlim()[0] <= t <= axes.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert accuracy.get_ylim()[1] == 100.0
        assert [t.get_text() for t in losses.get_legend().get_texts()][0] == "train (smoothed)"


def test_a_loss_of_zero_is_not_shown_as_minus_zero():
    from mnist_cli.infer.evaluation import LabelledImages, evaluate
    from mnist_cli.options import BackendName

    class Certain:  # a model whose answers are certain and right
        name, path, provider = BackendName.onnxruntime, "certain.onnx", "CPUExecutionProvider"

        def logits(self, images):
            return np.eye(10, dtype=np.float32)[[3] * len(images)] * 1e4

    data = LabelledImages(np.zeros((2, 28, 28), np.float32), np.array([3, 3]), [])
    report, _ = evaluate(Certain(), data)
    assert report.loss == 0.0 and str(report.loss) == "0.0"
