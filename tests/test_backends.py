"""One way to open a model file: every bad file is refused on open, with its name and a reason."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from mnist_cli.cli import app
from mnist_cli.data import load_split
from mnist_cli.infer.backends import BackendMismatch, ModelError, open_model
from mnist_cli.infer.evaluation import evaluate_model
from mnist_cli.train.checkpoints import load_checkpoint

runner = CliRunner()


def _onnx_file(
    path, *, classes=10, dtype=TensorProto.FLOAT, labels=None, output="matrix", scale=0.01
):
    """A tiny linear ONNX model, scores `scale` times the ink (0 on a blank image); `output`
    bends its output the way real files go wrong."""
    weight = numpy_helper.from_array(np.full((784, classes), scale, np.float32), "w")
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["scores"]),
    ]
    result, shape = "scores", ["N", classes]
    if dtype == TensorProto.DOUBLE:
        nodes[0] = helper.make_node("Flatten", ["image"], ["flat64"])
        nodes.insert(1, helper.make_node("Cast", ["flat64"], ["flat"], to=TensorProto.FLOAT))
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    if output == "vector":
        nodes.append(helper.make_node("ReduceSum", ["scores", "axes"], ["summed"], keepdims=0))
        result, shape = "summed", ["N"]
    elif output == "double batch":
        nodes.append(helper.make_node("Concat", ["scores", "scores"], ["twice"], axis=0))
        result, shape = "twice", ["M", classes]
    elif output == "two rows":  # right for a batch of 2, the size a lazy dry run would try
        ends = numpy_helper.from_array(np.array([2], np.int64), "ends")
        zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
        nodes += [
            helper.make_node("Constant", [], ["two"], value=ends),
            helper.make_node("Constant", [], ["start"], value=zero),
            helper.make_node("Slice", ["scores", "start", "two", "start"], ["first"]),
        ]
        result, shape = "first", ["M", classes]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", dtype, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info(result, TensorProto.FLOAT, shape)],
        [weight, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    if labels is not None:
        helper.set_model_props(model, {"class_labels": json.dumps(labels)})
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"dtype": TensorProto.DOUBLE}, "tensor(double), not float32"),
        ({"output": "vector"}, "not N x classes"),
        ({"output": "double batch"}, "shape [22, 10] for 11 images"),
        ({"output": "two rows"}, "shape [2, 10] for 11 images, not [11, 10]"),
        ({"classes": 20}, "shape [11, 20] for 11 images, not [11, 10]"),
        ({"classes": 20, "labels": [str(k) for k in range(20)]}, "reads the digits 0-9"),
        ({"labels": "not a list"}, "not a JSON list of strings"),
    ],
)
def test_onnx_files_that_load_but_would_not_run_are_refused(tmp_path, options, fragment):
    path = _onnx_file(tmp_path / "bad.onnx", **options)
    with pytest.raises(ModelError) as caught:
        open_model(path)
    assert "bad.onnx" in caught.value.message and fragment in caught.value.message
    assert caught.value.exit_code == 1


def test_a_plain_linear_onnx_file_is_accepted(tmp_path):
    backend = open_model(_onnx_file(tmp_path / "ok.onnx"))
    assert backend.name == "onnxruntime" and backend.labels == [str(d) for d in range(10)]
    probabilities = backend.probabilities(np.zeros((3, 1, 28, 28), np.float32))
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(1), 1)


@pytest.fixture(scope="module")
def static_batch(trained, tmp_path_factory):
    """The trained model exported as a beginner would: torch.onnx.export with a batch of one,
    then its classes named in the metadata (an 11th output is "none" only where it says so)."""
    from mnist_cli.train.checkpoints import classifier_from_checkpoint

    path = tmp_path_factory.mktemp("static") / "static.onnx"
    classifier = classifier_from_checkpoint(load_checkpoint(trained["checkpoint"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(classifier, torch.zeros(1, 1, 28, 28), path, verbose=False)
    graph = onnx.load(path)
    onnx.helper.set_model_props(graph, {"class_labels": json.dumps([*map(str, range(10)), "none"])})
    onnx.save(graph, path)
    return path


def test_an_eleventh_output_without_class_names_is_refused(static_batch, tmp_path):
    graph = onnx.load(static_batch)
    del graph.metadata_props[:]
    onnx.save(graph, tmp_path / "unnamed.onnx")
    with pytest.raises(ModelError, match=r"scores of shape \[1, 11\].*not \[1, 10\]"):
        open_model(tmp_path / "unnamed.onnx")


def test_static_batch_onnx_predicts_and_tests_like_its_checkpoint(static_batch, trained, tmp_path):
    backend = open_model(static_batch)
    assert backend.batch == 1
    report, _ = evaluate_model(static_batch, data_dir=trained["data_dir"])
    reference, _ = evaluate_model(trained["checkpoint"], data_dir=trained["data_dir"], device="cpu")
    assert report.confusion == reference.confusion and report.images == 1000
    test = load_split(trained["data_dir"], "test")
    for i in range(3):
        Image.fromarray(test.images[i]).save(tmp_path / f"{i}.png")
    result = runner.invoke(app, ["predict", str(tmp_path), "--model", str(static_batch), "--json"])
    assert result.exit_code == 0, result.output
    digits = [json.loads(line)["digit"] for line in result.stdout.splitlines()]
    assert len(digits) == 3
    assert sum(d == t for d, t in zip(digits, test.labels[:3], strict=True)) >= 2
    assert "onnxruntime" in result.stderr  # chosen by the file's kind, no --backend needed


@pytest.mark.parametrize(
    "content, kind",
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
        (b"hello, I am text\n", "a text file"),
        (b"", "an empty file"),
        (b"\x00\x01\x02\x03" * 8, "not a model file"),
    ],
)
def test_files_that_are_something_else_are_named_as_such(tmp_path, content, kind):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    result = runner.invoke(app, ["test", "--model", str(path)])
    assert result.exit_code == 1 and f"model.pt: {kind}" in result.output


def test_a_zip_named_pt_is_a_zip_archive(tmp_path):
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as archive:
        archive.writestr("readme.txt", "not a model")
    with pytest.raises(ModelError, match="model.pt: a zip archive, not an mnist checkpoint"):
        open_model(tmp_path / "model.pt")


def test_onnx_named_pt_runs_as_onnx_and_contradictions_exit_2(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(_onnx_file(tmp_path / "m.onnx").read_bytes())
    assert open_model(path).name == "onnxruntime"
    with pytest.raises(BackendMismatch) as caught:
        open_model(path, backend="torch")
    assert "an ONNX model" in caught.value.message and caught.value.exit_code == 2
    result = runner.invoke(app, ["predict", "x.png", "--model", str(path), "--backend", "torch"])
    assert result.exit_code == 2 and "--backend onnxruntime" in result.output


def test_a_folder_or_fifo_is_not_a_model(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.onnx")
    with pytest.raises(ModelError, match=r"pipe.onnx: a FIFO \(not a regular file\)"):
        open_model(tmp_path / "pipe.onnx")
    with pytest.raises(ModelError, match="a folder"):
        open_model(tmp_path)


def test_the_model_is_checked_before_any_image_is_read(tmp_path):
    bad = _onnx_file(tmp_path / "bad.onnx", classes=20)
    result = runner.invoke(app, ["predict", str(tmp_path / "missing.png"), "--model", str(bad)])
    assert result.exit_code == 1
    assert "bad.onnx" in result.output and "missing.png" not in result.output


def test_the_provider_that_ran_is_reported(tmp_path):
    image = np.zeros((28, 28), np.uint8)
    image[5:23, 13:15] = 255
    Image.fromarray(image).save(tmp_path / "one.png")
    result = CliRunner().invoke(
        app, ["predict", str(tmp_path / "one.png"), "--backend", "onnxruntime"]
    )
    assert result.exit_code == 0, result.output
    assert "onnxruntime on CPUExecutionProvider" in result.output


_CUDA_PROVIDER_PROBE = """
import json
import sys
import onnxruntime
from mnist_cli.infer import backends
from mnist_cli.options import BackendName

asked = []
real_session = onnxruntime.InferenceSession

def session(model, options, providers):
    asked.append([providers, "torch" in sys.modules])
    return real_session(model, options, providers=["CPUExecutionProvider"])

onnxruntime.get_available_providers = lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
onnxruntime.InferenceSession = session
before = "torch" in sys.modules
bundled = backends.default_model(BackendName.onnxruntime)[0]
backend = backends.open_model(bundled, device=sys.argv[1])
print(json.dumps({"before": before, "asked": asked[0], "provider": backend.provider}))
"""


@pytest.mark.parametrize("device, index", [("cuda:1", 1), ("cuda", 0), ("auto", 0)])
def test_the_cuda_provider_gets_the_named_gpu_and_torch_loaded_first(device, index):
    # Where CUDA is not installed system-wide, onnxruntime-gpu's CUDA provider finds cuDNN and
    # cuBLAS only once torch has loaded them. In a fresh process the CPU build stands in for it,
    # and the session opens on the CPU, as it does where no GPU answers. No GPU is visible to the
    # probe, so that "cuda:1" is not refused on a machine with one GPU.
    import os
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _CUDA_PROVIDER_PROBE, device],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    cuda = ["CUDAExecutionProvider", {"device_id": index}]
    assert seen["before"] is False  # nothing else had loaded torch: the backend did
    assert seen["asked"] == [[cuda, "CPUExecutionProvider"], True]
    assert seen["provider"] == "CPUExecutionProvider"  # what ran is reported, not what was asked


def _loop_file(path):
    """A 'digit model' whose Loop has no trip count and a condition that stays true."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["keep_in"], ["keep_out"]),
            helper.make_node("Identity", ["x_in"], ["x_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("keep_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("keep_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None),
        ],
    )
    true = helper.make_tensor("t", TensorProto.BOOL, [], [True])
    weight = numpy_helper.from_array(np.full((784, 10), 0.01, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["keep"], value=true),
            helper.make_node("Loop", ["", "keep", "image"], ["looped"], body=body),
            helper.make_node("Flatten", ["looped"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, path)
    return path


def test_a_graph_that_can_loop_for_ever_is_refused_before_it_runs(tmp_path):
    import time

    started = time.monotonic()
    with pytest.raises(ModelError, match="control-flow operator Loop"):
        open_model(_loop_file(tmp_path / "loop.onnx"))
    assert time.monotonic() - started < 5


def test_a_run_that_does_not_end_is_stopped_by_its_time_limit(tmp_path):
    import time

    import onnxruntime

    from mnist_cli.infer.backends import _interruptible

    session = onnxruntime.InferenceSession(str(_loop_file(tmp_path / "loop.onnx")))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _interruptible(session, ["logits"], {"image": np.zeros((1, 1, 28, 28), np.float32)}, 0.5)
    assert time.monotonic() - started < 3


def test_ctrl_c_stops_a_run_within_a_second(tmp_path):
    """The main thread waits on the run, not inside it: SIGINT lands at once."""
    import signal
    import time

    code = (
        "import sys, numpy as np, onnxruntime\n"
        "from mnist_cli.infer.backends import _interruptible\n"
        "session = onnxruntime.InferenceSession(sys.argv[1])\n"
        "print('running', flush=True)\n"
        "try:\n"
        "    _interruptible(session, ['logits'], {'image': np.zeros((1, 1, 28, 28), np.float32)},"
        " None)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, str(_loop_file(tmp_path / "loop.onnx"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline() == "running\n"
    time.sleep(0.5)
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0 and process.stdout.read() == "interrupted\n"
    assert time.monotonic() - sent < 1.5


@pytest.mark.parametrize("scale", [3e38, 1e36, float("inf"), float("nan")])
def test_scores_that_go_wrong_only_on_ink_are_refused_when_opened(tmp_path, scale):
    with pytest.raises(ModelError, match="NaN, infinite or absurd scores"):
        open_model(_onnx_file(tmp_path / "wild.onnx", scale=scale))


def test_scores_that_go_wrong_later_refuse_the_model_not_the_image(tmp_path):
    backend = open_model(_onnx_file(tmp_path / "ok.onnx"))
    with pytest.raises(ModelError, match="ok.onnx: gave NaN, infinite or absurd scores"):
        backend.logits(np.full((3, 1, 28, 28), np.float32(1e38), np.float32))


def test_a_current_export_is_the_default_and_a_stale_one_is_named(
    trained, tmp_path, monkeypatch, fresh_python
):
    from mnist_cli.train.export import export_onnx

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params").mkdir()
    best = tmp_path / "params" / "best.pt"
    best.write_bytes(trained["checkpoint"].read_bytes())
    export_onnx(best, tmp_path / "exported" / "model.onnx", data_dir=trained["data_dir"])
    current = open_model()
    assert current.name == "onnxruntime" and current.path == "exported/model.onnx"
    assert current.note is None
    _, imported = fresh_python("from mnist_cli.infer.backends import open_model\nopen_model()")
    assert imported == []  # the current export needs no torch
    best.write_bytes((trained["out_dir"] / "last.pt").read_bytes())  # trained on, not exported
    stale = open_model()
    assert stale.name == "torch" and stale.path == "params/best.pt"
    assert "exported/model.onnx is not the export of params/best.pt (stale)" in stale.note


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""

    def varint(value: int) -> bytes:
        out = b""
        while True:
            out += bytes([(value & 0x7F) | (0x80 if value > 0x7F else 0)])
            value >>= 7
            if not value:
                return out

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_a_graph_nested_a_thousand_deep_is_refused_not_a_traceback(tmp_path):
    node = _field(4, b"Relu")
    for _ in range(1000):  # each Relu holds a graph (attribute 6) whose node is the last one
        node = _field(4, b"Relu") + _field(5, _field(1, b"body") + _field(6, _field(1, node)))
    model = b"\x08\x09" + _field(7, _field(1, node))  # ir_version 9, then the graph
    (tmp_path / "deep.onnx").write_bytes(model)
    with pytest.raises(ModelError, match="a Relu node that holds a subgraph"):
        open_model(tmp_path / "deep.onnx")


def test_cuda_asked_by_name_without_a_cuda_provider_is_a_usage_error(tmp_path):
    import onnxruntime

    from mnist_cli.errors import DeviceError

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    path = _onnx_file(tmp_path / "m.onnx")
    with pytest.raises(DeviceError, match="--device cuda: this onnxruntime has no CUDA provider"):
        open_model(path, device="cuda")
    assert open_model(path, device="auto").provider == "CPUExecutionProvider"  # auto falls back


def test_an_answer_is_refused_over_a_30_percent_chance_of_none_or_under_min_confidence():
    from mnist_cli.infer.backends import answers

    def row(none: float, seven: float) -> list[float]:
        rest = (1 - none - seven) / 9
        return [seven if digit == 7 else rest for digit in range(10)] + [none]

    rows = np.array([row(0.29, 0.7), row(0.31, 0.68), row(0.0, 0.5)], np.float32)
    best, confidence, refused = answers(rows)
    assert best.tolist() == [7, 7, 7] and refused.tolist() == [False, True, False]
    assert answers(rows, min_confidence=0.6)[2].tolist() == [False, True, True]
    ten_classes = rows[:, :10] / rows[:, :10].sum(1, keepdims=True)  # no "none": never refused
    assert not answers(ten_classes)[2].any()
