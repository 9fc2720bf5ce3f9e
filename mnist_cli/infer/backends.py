"""Opening a model file, `.pt` or `.onnx`, checked before it is trusted, as one kind of backend.

Every command runs models through `open_model`: a backend takes float32 N x 1 x 28 x 28 pixels
in [0, 1] and returns logits and probabilities. The onnxruntime path never imports torch.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_cli.data import CLASS_LABELS, MODEL_LABELS, NONE_INDEX, NONE_LABEL
from mnist_cli.devices import check_device_name
from mnist_cli.errors import MnistError, first_line
from mnist_cli.files import MISSING, ONNX_FILE, TORCH_FILE, describe_bytes, path_problem
from mnist_cli.infer.onnxgraph import GraphReadError, control_flow, metadata
from mnist_cli.infer.providers import providers_for, shadowed_gpu_build
from mnist_cli.options import (
    BUNDLED_MODELS,
    EXPORT_FILE,
    PACKAGE_DIR,
    PRETRAINED_DIR,
    RUN_DIR,
    BackendName,
)

if TYPE_CHECKING:
    from mnist_cli.train.checkpoints import Checkpoint

IMAGE_SHAPE = (1, 28, 28)
MAX_MODEL_BYTES = 256 << 20  # a digit model is ~100 KB; anything this large is not one
_CHUNK = 1000  # images per call when the model takes any batch size
MAX_SCORE = 1e4  # a digit model's logits stay within tens; beyond this a file is broken
SAMPLE_DIGITS = PACKAGE_DIR / "samples" / "digits.npy"  # MNIST test 0-9
DRY_RUN_SECONDS = 10.0  # a digit model answers 11 images in milliseconds


DEFAULT_MODELS = {
    BackendName.torch: RUN_DIR / "best.pt",
    BackendName.onnxruntime: EXPORT_FILE,
}
_KIND_OF = {BackendName.torch: "an mnist checkpoint", BackendName.onnxruntime: "an ONNX model"}


class ModelError(MnistError):
    """A model file cannot be opened or does not behave as a digit classifier."""


class BackendMismatch(ModelError):
    """--backend names a backend that cannot run this kind of file."""

    exit_code = 2


class Backend:
    """A checked model: `logits` and `probabilities` of float32 N x 1 x 28 x 28 batches."""

    name: BackendName
    provider: str
    path: str
    labels: list[str]
    note: str | None = None  # a warning about how it runs, for the user
    batch: int | None = None  # a fixed batch size the model was exported with, if any

    @property
    def refuses(self) -> bool:
        """Whether the model has a "none" class: it can answer that an image holds no digit."""
        return self.labels[-1] == NONE_LABEL

    @property
    def bundled(self) -> bool:
        """Whether this is the pretrained model shipped in the package."""
        return Path(self.path).resolve().parent == PRETRAINED_DIR

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits (N x classes, float32), run in chunks the model accepts.

        Scores that are not finite, or out of any sane range, or a wrong number of rows make
        the model refused (ModelError): a NaN is never counted as a digit.
        """
        if images.dtype != np.float32 or images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"expected float32 N x 1 x 28 x 28, got {images.dtype} {images.shape}")
        size = self.batch or _CHUNK
        chunks = [self._chunk(images[i : i + size], size) for i in range(0, len(images), size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.labels)), np.float32)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.logits(images))

    def _chunk(self, images: np.ndarray, size: int) -> np.ndarray:
        count = len(images)
        if self.batch is not None and count < size:  # pad a fixed-batch model's last chunk
            images = np.concatenate([images, np.zeros((size - count, *IMAGE_SHAPE), np.float32)])
        scores = np.asarray(self._run(images), dtype=np.float32)
        expected = (len(images), len(self.labels))
        if scores.shape != expected:
            raise ModelError(
                f"{self.path}: gave scores of shape {list(scores.shape)} for {len(images)} "
                f"images, not {list(expected)}; refused",
                hint=_MODEL_HINT,
            )
        with np.errstate(invalid="ignore"):
            sane = np.isfinite(scores).all() and np.abs(scores).max(initial=0) <= MAX_SCORE
        if not sane:
            raise ModelError(
                f"{self.path}: gave NaN, infinite or absurd scores (beyond +-{MAX_SCORE:g}) "
                f"on {len(images)} images; refused",
                hint="the file is damaged or was not trained on digits",
            )
        return scores[:count]

    def _check_on_digits(self) -> None:
        """Run the bundled sample digits and a blank image: sane scores, one row per image.

        An odd batch (11) that a fixed-batch model runs in chunks of its own size.
        """
        samples = np.load(SAMPLE_DIGITS, allow_pickle=False)[:, None].astype(np.float32) / 255
        self.logits(np.concatenate([samples, np.zeros((1, *IMAGE_SHAPE), np.float32)]))

    def _run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def answers(
    probabilities: np.ndarray, min_confidence: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a model's probabilities: the most likely digit, its probability, and whether
    the answer is refused: the chance of "none" is over NONE_SURE, or the digit is under
    `min_confidence`."""
    digits = probabilities[:, :NONE_INDEX]
    best, confidence = digits.argmax(1), digits.max(1)
    refused = confidence < min_confidence
    if probabilities.shape[1] > NONE_INDEX:  # the "none" column
        refused |= probabilities[:, NONE_INDEX] > NONE_SURE
    return best, confidence, refused


# The chance of "none" above which an image is refused: on a development set of the made kinds
# (never the benchmark's), many more letters, symbols and scribbles for few more real digits.
NONE_SURE = 0.3


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def default_model(backend: BackendName | None) -> tuple[Path, str | None]:
    """The file a command uses without --model, and a note when the choice needs one.

    The user's own model comes first, the bundled one last. Of params/best.pt and
    exported/model.onnx, the ONNX file wins when it is the export of that very best.pt (its
    metadata holds the checkpoint's SHA-256): the same model without loading torch. A stale
    export loses to the checkpoint, with a note.
    """
    best, exported = DEFAULT_MODELS[BackendName.torch], DEFAULT_MODELS[BackendName.onnxruntime]
    if backend is not None:
        candidates = [DEFAULT_MODELS[backend], BUNDLED_MODELS[backend]]
        return next((path for path in candidates if path.is_file()), candidates[0]), None
    if best.is_file() and exported.is_file():
        if _exported_from(exported, best):
            return exported, None
        return best, (
            f"{exported} is not the export of {best} (stale): using {best}; "
            "`mnist export` makes them one again"
        )
    # The bundled ONNX file last: it needs no torch.
    candidates = [best, exported, BUNDLED_MODELS[BackendName.onnxruntime]]
    return next((path for path in candidates if path.is_file()), candidates[0]), None


def _exported_from(onnx_file: Path, checkpoint: Path) -> bool:
    """Whether `onnx_file`'s metadata names `checkpoint`'s current bytes as its source."""
    import hashlib

    try:
        if onnx_file.stat().st_size > MAX_MODEL_BYTES:
            return False
        source = metadata(onnx_file.read_bytes()).get("source_checkpoint_sha256")
        return source == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    except (OSError, GraphReadError):
        return False


def open_model(
    path: Path | str | None = None,
    *,
    backend: BackendName | str | None = None,
    device: str = "auto",
) -> Backend:
    """Open and check a model file; its bytes pick the backend unless `backend` forces one."""
    backend = BackendName(backend) if backend is not None else None
    device = check_device_name(device)
    note = None
    if path is None:
        path, note = default_model(backend)
    path = Path(path)
    kind = detect_backend(path)
    if backend is not None and backend != kind:
        raise BackendMismatch(
            f"{path}: {_KIND_OF[kind]}, which --backend {backend.value} cannot run",
            hint=f"drop --backend, or use --backend {kind.value}",
        )
    if kind is BackendName.onnxruntime:
        opened: Backend = OnnxBackend(str(path), str(path), device)
    else:
        from mnist_cli.errors import CheckpointError
        from mnist_cli.train.checkpoints import load_checkpoint

        try:
            checkpoint = load_checkpoint(path)
        except CheckpointError as error:
            raise ModelError(error.message, hint=error.hint) from None
        opened = TorchBackend(checkpoint, str(path), device)
    opened.note = opened.note or note
    return opened


def detect_backend(path: Path) -> BackendName:
    """Which backend a file needs, from its bytes (not its name); ModelError if neither."""
    problem = path_problem(path)
    if problem == MISSING:
        tool = "mnist export" if path.suffix.lower() == ".onnx" else "mnist train"
        raise ModelError(
            f"no model at {path}", hint=f"make one with `{tool}`, or pass --model FILE"
        )
    if problem is not None:
        raise ModelError(f"{path}: {problem}, not a model file")
    size = path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise ModelError(f"{path}: {size:,} bytes, too large for a digit model")
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
    except OSError as error:
        raise ModelError(f"{path}: cannot be read ({error.strerror})") from None
    kind = describe_bytes(head)
    if kind in (TORCH_FILE, ONNX_FILE):
        return BackendName.torch if kind == TORCH_FILE else BackendName.onnxruntime
    kind = kind or "not a model file"
    raise ModelError(f"{path}: {kind}; expected a .pt checkpoint or an .onnx model")


class OnnxBackend(Backend):
    """An ONNX graph in onnxruntime, checked on open: input, outputs, labels and a dry run."""

    name = BackendName.onnxruntime

    def __init__(self, model: str | bytes, path: str, device: str = "auto") -> None:
        import onnxruntime

        self.path = path
        data = model if isinstance(model, bytes) else Path(model).read_bytes()
        try:
            loop = control_flow(data)
        except GraphReadError as error:
            raise ModelError(f"{path}: not a usable ONNX model (damaged: {error})") from None
        if loop is not None:
            raise self._fail(
                f"its graph holds {loop}, which can run for ever; "
                "a digit classifier is a straight pipeline of layers"
            )
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings would clutter the CLI's output
        # Idle intra-op threads sleep instead of spinning: after each small run (one upload in
        # `serve`) a spinning thread burned a second core for nothing; big batches lose nothing.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        onnxruntime.set_default_logger_severity(3)  # the same for warnings before the session's
        providers = providers_for(device)
        try:
            # From its path when it has one: weights may lie beside it (external data).
            self.session = onnxruntime.InferenceSession(model, options, providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(f"{path}: not a usable ONNX model ({first_line(error)})") from None
        self.provider = self.session.get_providers()[0]
        self.note = shadowed_gpu_build() if device != "cpu" else None
        self.input_name, self.batch = self._check_input()
        self.output_name = self._check_output()
        self.labels = self._labels()
        self._time_limit: float | None = DRY_RUN_SECONDS
        self._check_on_digits()
        self._time_limit = None

    def _fail(self, problem: str) -> ModelError:
        return ModelError(f"{self.path}: {problem}", hint=_MODEL_HINT)

    def _check_input(self) -> tuple[str, int | None]:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise self._fail(f"has {len(inputs)} inputs; a digit model takes one image batch")
        image = inputs[0]
        if image.type != "tensor(float)":
            raise self._fail(f"input {image.name!r} is {image.type}, not float32 (tensor(float))")
        shape = list(image.shape)
        fixed = [dim if isinstance(dim, int) else None for dim in shape]
        if len(shape) != 4 or any(
            size is not None and size != want
            for size, want in zip(fixed[1:], IMAGE_SHAPE, strict=True)
        ):
            raise self._fail(f"expects input {shape}, not N x 1 x 28 x 28 images")
        return image.name, fixed[0] if fixed[0] and fixed[0] > 0 else None

    def _check_output(self) -> str:
        outputs = {output.name: output for output in self.session.get_outputs()}
        name = "logits" if "logits" in outputs else next(iter(outputs))
        output = outputs[name]
        if output.type not in ("tensor(float)", "tensor(double)", "tensor(float16)"):
            raise self._fail(f"output {name!r} is {output.type}, not floating-point scores")
        if output.shape and len(output.shape) != 2:
            raise self._fail(f"output {name!r} has shape {output.shape}, not N x classes")
        return name

    def _labels(self) -> list[str]:
        meta = self.session.get_modelmeta().custom_metadata_map
        if "class_labels" not in meta:
            return list(CLASS_LABELS)
        import json

        try:
            labels = json.loads(meta["class_labels"])
        except ValueError:
            labels = None
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise self._fail("its class_labels metadata is not a JSON list of strings")
        if labels not in MODEL_LABELS:
            raise self._fail(
                f"its classes are {labels[:12]!r}; mnist reads the digits 0-9 (and 'none')"
            )
        return labels

    def _run(self, images: np.ndarray) -> np.ndarray:
        feeds = {self.input_name: images}
        try:
            return _interruptible(self.session, [self.output_name], feeds, self._time_limit)[0]
        except TimeoutError:
            raise self._fail(
                f"takes over {self._time_limit:g} s for {len(images)} images; refused"
            ) from None
        except Exception as error:  # onnxruntime raises its own exception types
            raise self._fail(f"fails on {len(images)} images ({first_line(error)})") from None


def _interruptible(session: Any, outputs: list[str], feeds: dict, seconds: float | None) -> list:
    """`session.run` in a worker thread that Ctrl-C or a time limit stops within a moment.

    onnxruntime holds the main thread in C++ until a run ends, so a signal would wait for it;
    its RunOptions.terminate flag stops a run between (and inside looping) operators.
    """
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.log_severity_level = 4  # a terminated run is expected here, not an error to log
    if seconds is None and threading.current_thread() is not threading.main_thread():
        return session.run(outputs, feeds, options)  # a server's worker: no signal comes here
    outcome: dict[str, Any] = {}
    finished = threading.Event()  # waited on instead of join: an interrupted join breaks the
    # thread's bookkeeping, and the process then dies at exit ("terminate called")

    def work() -> None:
        try:
            outcome["result"] = session.run(outputs, feeds, options)
        except Exception as error:  # handed to the caller's thread
            outcome["error"] = error
        finally:
            finished.set()

    threading.Thread(target=work, name="onnxruntime run", daemon=True).start()
    try:
        done = finished.wait(seconds)
    except BaseException:  # Ctrl-C: stop the run, then let the interrupt go on
        _stop(finished, options)
        raise
    if not done:
        _stop(finished, options)
        raise TimeoutError
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _stop(finished: threading.Event, options: Any) -> None:
    """Ask a run to stop and wait until it has: a process must not exit with onnxruntime still
    running in a thread."""
    options.terminate = True
    finished.wait(_STOP_SECONDS)


_STOP_SECONDS = 2.0  # onnxruntime checks the flag between operators: milliseconds


_MODEL_HINT = (
    "mnist runs ONNX models that take float32 N x 1 x 28 x 28 pixels in [0, 1] and give "
    "N x 10 scores (11 with a 'none' class named in its metadata); `mnist export` writes such "
    "a file"
)


class TorchBackend(Backend):
    """A validated checkpoint's network, behind its normalisation, on a torch device."""

    name = BackendName.torch

    def __init__(self, checkpoint: Checkpoint, path: str, device: str = "auto") -> None:
        from mnist_cli.devices import resolve_device

        self.path, self.checkpoint = path, checkpoint
        self.device = resolve_device(device)
        from mnist_cli.train.checkpoints import classifier_from_checkpoint

        self.module = classifier_from_checkpoint(checkpoint).to(self.device)
        self.provider = str(self.device)
        self.labels = list(checkpoint.class_labels)
        self._check_on_digits()

    def _run(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            return self.module(batch)[0].float().cpu().numpy()
