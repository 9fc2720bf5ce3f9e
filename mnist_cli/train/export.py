"""Exporting a checkpoint to one self-contained ONNX file, checked against torch before it lands."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_cli import __version__
from mnist_cli.errors import MnistError, OptionError
from mnist_cli.files import (
    ONNX_FILE,
    atomic_write,
    check_writable,
    describe_bytes,
    real_target,
)
from mnist_cli.infer.backends import (
    MAX_MODEL_BYTES,
    BackendName,
    OnnxBackend,
    TorchBackend,
    detect_backend,
)
from mnist_cli.options import DATA_DIR, PRETRAINED_DIR, Quantization
from mnist_cli.train.checkpoints import load_checkpoint

if TYPE_CHECKING:
    from mnist_cli.train.checkpoints import Checkpoint

CALIBRATION_IMAGES = 1000  # training images that set the int8 activation ranges
MIN_INT8_AGREEMENT = 0.99  # share of check images on which int8 and float must agree
DEFAULT_OPSET = 18
MAX_PROBABILITY_DIFF = 1e-5
INPUT_DESCRIPTION = (
    "image: float32 N x 1 x 28 x 28, pixels in [0, 1], light digit on a dark background "
    "(as MNIST), centred by mass in the 28x28 field; normalisation is inside the graph"
)


class ExportError(MnistError):
    """The export could not be made, or did not match torch; nothing was written."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    images: int  # how many images the onnxruntime check compared
    real_images: bool  # MNIST test images (True) or random ones (False)
    max_probability_diff: float
    same_predictions: bool
    size_bytes: int
    quantization: str | None = None
    agreement: float = 1.0  # share of check images with the same digit as the reference
    reference: str = "torch"  # what the file was compared with


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_images(data_dir: Path | str | None, count: int) -> tuple[np.ndarray, bool]:
    from mnist_cli.data import load_split
    from mnist_cli.errors import DataMissing

    if data_dir is not None:
        try:
            test = load_split(data_dir, "test")
        except DataMissing:  # damaged or odd files are named, not checked around in silence
            test = None
        if test is not None and len(test):  # an empty test set checks nothing: use random images
            return (test.images[:count, None].astype(np.float32) / 255), True
    return np.random.default_rng(0).random((count, 1, 28, 28), dtype=np.float32), False


def export_onnx(
    checkpoint: Path | str,
    out: Path | str,
    *,
    opset: int = DEFAULT_OPSET,
    data_dir: Path | str | None = DATA_DIR,
    check_images: int = 1000,
    quantize: Quantization | str | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Export with torch's dynamo exporter, add metadata, check, compare with onnxruntime, save.

    `quantize="int8"` then quantises the checked float graph (static, calibrated on training
    images) and compares it with the float graph instead. An existing `out` that this tool did
    not write is replaced only with `overwrite=True`; the checkpoint itself never is.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    quantize = Quantization(quantize) if quantize is not None else None
    _check_opset(opset)
    target = _check_target(out, checkpoint, overwrite=overwrite)
    check_writable(target, option="--out")
    if detect_backend(checkpoint) is BackendName.onnxruntime:
        raise ExportError(
            f"{checkpoint}: an ONNX model already; export takes a .pt checkpoint",
            hint="pass the checkpoint it came from, e.g. --model params/best.pt",
        )
    saved = load_checkpoint(checkpoint)
    reference = TorchBackend(saved, str(checkpoint), "cpu")  # checked on the sample digits
    metadata = _metadata(saved, checkpoint)
    data = _checked_bytes(_to_onnx(reference, opset), metadata, "exported graph")
    images, real = _check_images(data_dir, check_images)
    expected = reference.probabilities(images)
    got = OnnxBackend(data, f"the graph exported from {checkpoint}", "cpu").probabilities(images)
    diff = float(np.abs(got - expected).max())
    same = bool((got.argmax(1) == expected.argmax(1)).all())
    if not diff <= MAX_PROBABILITY_DIFF or not same:  # `not <=` also fails on NaN
        raise ExportError(
            f"onnxruntime disagrees with torch (max probability difference {diff:.2e}, "
            f"same predictions: {same}); nothing written to {out}"
        )
    if quantize is None:
        atomic_write(target, lambda handle: handle.write(data))
        return ExportResult(out, opset, len(images), real, diff, same, len(data))
    return _export_int8(
        data,
        {**metadata, "quantization": _INT8_NOTE},
        out,
        target,
        opset,
        images,
        real,
        data_dir,
        got,
    )


def _check_opset(opset: int) -> None:
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not DEFAULT_OPSET <= opset <= newest:
        raise OptionError(
            f"--opset {opset}: choose {DEFAULT_OPSET} to {newest} (the exporter needs "
            f"{DEFAULT_OPSET} or newer; the installed onnx knows up to {newest})"
        )


def _check_target(out: Path, checkpoint: Path, *, overwrite: bool) -> Path:
    """The real file `out` names (links and `..` resolved), refused if it is the checkpoint
    (by identity, not spelling), a folder, a special file or a file we did not make."""
    target = real_target(out)
    if target.is_dir():
        raise OptionError(f"--out {out}: is a folder; give a file name such as {out}/model.onnx")
    if not target.exists():
        return target
    if checkpoint.exists() and os.path.samefile(target, checkpoint):
        raise OptionError(f"--out {out} is the checkpoint being exported; choose another file")
    if not target.is_file():
        raise OptionError(f"--out {out}: not a regular file")
    if target.parent == PRETRAINED_DIR:
        raise OptionError(
            f"--out {out} is a model shipped in the package; choose another file",
            hint="scripts/make_pretrained.py rebuilds the bundled models",
        )
    if not overwrite and not _written_by_us(target):
        raise ExportError(
            f"{out} exists and was not written by `mnist export`; nothing was changed",
            hint="pass --overwrite to replace it, or choose another --out",
        )
    return target


def _written_by_us(path: Path) -> bool:
    """An ONNX file that `mnist export` stamped: the source checkpoint's hash and our version."""
    from mnist_cli.infer.onnxgraph import GraphReadError, metadata

    if path.stat().st_size > MAX_MODEL_BYTES:
        return False
    data = path.read_bytes()
    if describe_bytes(data[:64]) != ONNX_FILE:
        return False
    try:
        stamped = metadata(data)
    except GraphReadError:
        return False
    return {"source_checkpoint_sha256", "mnist_cli_version"} <= stamped.keys()


def _to_onnx(reference: TorchBackend, opset: int) -> Any:
    """The checkpoint's classifier as an ONNX ModelProto with a dynamic batch."""
    import torch

    example = torch.rand(2, 1, 28, 28)  # a batch of 1 would be specialised into the graph
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                reference.module,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["image"],
                output_names=["logits", "probabilities"],
                dynamic_shapes={"image": {0: batch}},
                external_data=False,
                verbose=False,
            )
        model = program.model_proto
    except Exception as error:  # the exporter raises many kinds
        raise ExportError(f"torch could not export {reference.path}: {error}") from error
    written = {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    if written != {opset}:
        raise ExportError(f"the exporter wrote opset {sorted(written)}, not the {opset} asked for")
    return model


def _metadata(saved: Checkpoint, checkpoint: Path) -> dict[str, str]:
    """What the ONNX file says about itself, so that a client needs nothing else."""
    return {
        "class_labels": json.dumps(saved.class_labels),
        "input": INPUT_DESCRIPTION,
        "architecture": json.dumps({"name": saved.architecture, "arguments": saved.arguments}),
        "normalization": json.dumps(saved.normalization),
        "source_checkpoint_sha256": sha256_of(checkpoint),
        "val_accuracy": str(saved.val_accuracy),
        "temperature": str(saved.temperature),
        "epochs_trained": str(len(saved.state.history)),
        "mnist_cli_version": __version__,
        **({"fine_tuned_from": Path(init).name} if (init := saved.options.get("init")) else {}),
    }


def _checked_bytes(model: Any, metadata: dict[str, str], what: str) -> bytes:
    """Stamp the metadata, pass onnx.checker, serialise."""
    import onnx

    onnx.helper.set_model_props(model, metadata)
    model.producer_name, model.doc_string = "mnist_cli", INPUT_DESCRIPTION
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the {what} fails onnx.checker: {error}") from error
    return model.SerializeToString()


def _export_int8(
    float_data: bytes,
    metadata: dict[str, str],
    out: Path,
    target: Path,
    opset: int,
    images: np.ndarray,
    real: bool,
    data_dir: Path | str | None,
    float_probabilities: np.ndarray,
) -> ExportResult:
    """Quantise the checked float graph, compare it with that graph, and save it."""
    data = _checked_bytes(_quantize_int8(float_data, data_dir), metadata, "int8 graph")
    probabilities = OnnxBackend(data, "the int8 graph", "cpu").probabilities(images)
    agreement = float((probabilities.argmax(1) == float_probabilities.argmax(1)).mean())
    if agreement < MIN_INT8_AGREEMENT:
        raise ExportError(
            f"the int8 model agrees with the float one on only {agreement:.1%} of "
            f"{len(images)} images; nothing written to {out}"
        )
    atomic_write(target, lambda handle: handle.write(data))
    return ExportResult(
        out,
        opset,
        len(images),
        real,
        float(np.abs(probabilities - float_probabilities).max()),
        agreement == 1.0,
        len(data),
        quantization="int8",
        agreement=agreement,
        reference="float onnx",
    )


_INT8_NOTE = (
    "int8, static, QDQ, per-channel 7-bit weights (reduce_range), "
    f"calibrated on {CALIBRATION_IMAGES} training images"
)


def _quantize_int8(float_model: bytes, data_dir: Path | str | None):
    """Static int8 quantisation with onnxruntime's tools; activation ranges from real digits."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mnist_cli.data import load_split

    if data_dir is None:
        raise ExportError(
            "int8 calibration needs the MNIST training images",
            hint="run `mnist download`, or pass --data-dir",
        )
    train = load_split(data_dir, "train")
    if not len(train):
        raise ExportError("int8 calibration needs training images; the training set is empty")
    images = train.images[:CALIBRATION_IMAGES, None].astype(np.float32) / 255

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(images[i : i + 100] for i in range(0, len(images), 100))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory() as scratch:
        source, prepared, result = (Path(scratch, n) for n in ("f.onnx", "p.onnx", "q.onnx"))
        source.write_bytes(float_model)
        quant_pre_process(str(source), str(prepared))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(prepared),
                str(result),
                Batches(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                # 7-bit weights: x86 CPUs without VNNI multiply u8 x s8 pairs into saturating
                # 16-bit sums (VPMADDUBSW); full 8-bit per-channel weights overflow them there.
                reduce_range=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                # A batch norm after a pool stays in the graph; its scale has one axis, 0.
                extra_options={"QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}},
            )
        return onnx.load(str(result))
