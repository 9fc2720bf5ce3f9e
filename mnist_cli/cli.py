"""The `mnist` command: parses options, calls one core function, shows the result."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated

import typer

from mnist_cli import __version__
from mnist_cli.options import BackendName, ExportFormat, Quantization

app = typer.Typer(
    name="mnist",
    help="Handwritten digit recognition: download MNIST, train, test, export, predict.\n\n"
    "Example: mnist download && mnist train && mnist test",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `yes | head -1`


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the core's errors into a message and an exit code instead of a traceback."""
    from mnist_cli import console
    from mnist_cli.errors import MnistError

    try:
        yield
    except MnistError as error:
        console.print_error(error)
        raise typer.Exit(code=error.exit_code) from None
    except KeyboardInterrupt:
        console.err.print("Interrupted.")
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # the reader went away (`| head -1`): stop quietly
        _silence_stdout()
        raise typer.Exit(code=EXIT_BROKEN_PIPE) from None
    except OSError as error:  # a file or folder the core could not read or write
        where = f": {error.filename}" if error.filename else ""
        console.print_error(MnistError(f"{error.strerror or error}{where}"))
        raise typer.Exit(code=1) from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    with suppress(OSError, ValueError, AttributeError):  # no real descriptor under test runners
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mnist {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Handwritten digit recognition: download MNIST, train, test, export, predict.

    Example: mnist download && mnist train && mnist test
    """


DataDir = Annotated[
    Path, typer.Option("--data-dir", help="Folder holding MNIST (as torchvision lays it out).")
]
Device = Annotated[
    str,
    typer.Option(
        "--device", help="auto, cpu, cuda, cuda:N or mps (auto: an accelerator if present)."
    ),
]


@app.command()
def download(
    data_dir: DataDir = Path("datafiles"),
    source: Annotated[
        Path | None,
        typer.Option("--from", help="Import the four files from this local folder (gzip or not)."),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(help="Check the files against the official MD5s (--no-verify for a subset)."),
    ] = True,
) -> None:
    """Download the four MNIST files, or import them with --from.

    Files already present and valid are left as they are.

    Example: mnist download --from ~/Downloads/mnist
    """
    from mnist_cli import console
    from mnist_cli import download as core

    with _user_errors():
        if source is not None:
            outcomes = core.import_mnist(data_dir, source, verify_md5=verify)
        else:
            with console.DownloadProgress() as progress:
                outcomes = core.download_mnist(data_dir, on_progress=progress)
        for outcome in outcomes:
            state = {
                "present": "already present and valid",
                "kept": "kept the official file already there (the imported one is not official)",
            }.get(outcome.status, outcome.status)
            console.note(f"{outcome.name}: {state} ({outcome.path})")


@app.command()
def train(
    model: Annotated[
        str | None,
        typer.Option(help="Architecture: cnn (default, strongest) or fc (the tutorial's net)."),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Passes over the training images. \\[default: cnn 15, fc 20]"),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per optimiser step. \\[default: 256]")
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help="Peak learning rate of the one-cycle schedule. \\[default: cnn 4e-3, fc 1e-3]"
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed for weights, validation split and batch order. \\[default: 0]"),
    ] = None,
    augment: Annotated[
        bool | None,
        typer.Option(
            "--augment/--no-augment",
            help="Random rotations, scalings and shifts of each batch. "
            "\\[default: on for cnn, off for fc]",
        ),
    ] = None,
    validation_size: Annotated[
        int | None,
        typer.Option(help="Training images held out to pick best.pt. \\[default: 5000]"),
    ] = None,
    device: Device = "auto",
    data_dir: DataDir = Path("datafiles"),
    out: Annotated[Path, typer.Option(help="Folder for last.pt and best.pt.")] = Path("params"),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT/last.pt with its saved options.")
    ] = False,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile", help="torch.compile the network (opt-in: no gain measured for the cnn)."
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Start again in an OUT that holds a run; its files are replaced when the new "
            "run saves its first epoch.",
        ),
    ] = False,
) -> None:
    """Train a model; save OUT/last.pt every epoch and OUT/best.pt at the best validation score.

    Ctrl-C saves OUT/last.pt; --resume continues from there.

    Example: mnist train --device cuda --epochs 30
    """
    from mnist_cli import console
    from mnist_cli.errors import MnistError

    chosen = {
        "model": model,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "augment": augment,
        "validation_size": validation_size,
    }
    given = [f"--{k.replace('_', '-')}" for k, v in chosen.items() if v is not None]
    if resume and given:
        console.print_error(
            MnistError(
                f"--resume continues with the saved options; drop {', '.join(given)}",
            )
        )
        raise typer.Exit(code=2)
    with _user_errors():
        from mnist_cli import training

        try:
            config = (
                None
                if resume
                else training.default_config(
                    model or "cnn", **{k: v for k, v in chosen.items() if k != "model"}
                )
            )
        except (ValueError, TypeError) as error:
            console.print_error(MnistError(str(error)))
            raise typer.Exit(code=2) from None
        with console.TrainProgress() as progress:
            result = training.train(
                config,
                data_dir=data_dir,
                out_dir=out,
                device=device,
                resume=resume,
                callback=progress,
                compile=compile,
                overwrite=overwrite,
            )
        console.note(
            f"Best validation accuracy {result.best_val_accuracy:.2%} at epoch "
            f"{result.best_epoch}: {result.best_path}"
        )


@app.command()
def test(
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="A .pt checkpoint (run in torch) or .onnx file (run in onnxruntime). "
            "\\[default: params/best.pt, else exported/model.onnx]",
        ),
    ] = None,
    data_dir: DataDir = Path("datafiles"),
    device: Device = "auto",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the report as one JSON object.")
    ] = False,
    errors: Annotated[
        Path | None,
        typer.Option(help="Save a PNG grid of the misclassified digits to this .png file."),
    ] = None,
) -> None:
    """Evaluate a model on the 10,000 MNIST test images.

    Example: mnist test --model exported/model.onnx --errors errors.png
    """
    from mnist_cli import console

    with _user_errors():
        from mnist_cli import evaluation

        if errors is not None:
            evaluation.check_image_path(errors, option="--errors")
        report, wrong = evaluation.evaluate_model(model, data_dir=data_dir, device=device)
        if errors is not None:
            evaluation.save_error_grid(wrong, errors)
        if json_output:
            console.print_json(report.to_dict())
        else:
            console.show_report(report)
        if errors is not None:
            console.note(f"Saved {report.errors} misclassified digits to {errors}")


@app.command()
def export(
    format: Annotated[
        ExportFormat, typer.Option("--format", help="Output format.")
    ] = ExportFormat.onnx,
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint to export.")] = Path(
        "params/best.pt"
    ),
    out: Annotated[
        Path | None,
        typer.Option(
            help="File to write. \\[default: exported/model.onnx, exported/model-int8.onnx]"
        ),
    ] = None,
    opset: Annotated[
        int, typer.Option(min=18, help="ONNX opset: 18 up to what the installed onnx knows.")
    ] = 18,
    quantize: Annotated[
        Quantization | None,
        typer.Option(help="int8: static quantisation calibrated on 1,000 training images."),
    ] = None,
    data_dir: DataDir = Path("datafiles"),
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace an existing OUT that `mnist export` did not write."
        ),
    ] = False,
) -> None:
    """Export a checkpoint to one self-contained ONNX file, checked against torch first.

    The graph takes float32 N x 1 x 28 x 28 pixels in [0, 1] (input `image`) and returns
    `logits` and `probabilities`; normalisation is inside. Verified with onnx.checker and
    onnxruntime on 1,000 test images (random ones without data); on failure nothing is written.
    With --quantize int8 the int8 graph is compared with the float one.

    Example: mnist export --format onnx --out exported/model.onnx
    """
    from mnist_cli import console

    with _user_errors():
        from mnist_cli import export as core

        if out is None:
            out = Path("exported/model-int8.onnx" if quantize else "exported/model.onnx")
        result = core.export_onnx(
            checkpoint, out, opset=opset, data_dir=data_dir, quantize=quantize, overwrite=overwrite
        )
        source = "MNIST test images" if result.real_images else "random images (no MNIST data)"
        console.note(
            f"onnx.checker: passed. onnxruntime vs {result.reference} on {result.images} "
            f"{source}: max |probability difference| {result.max_probability_diff:.2e}, "
            f"same predictions: {result.agreement:.2%}"
        )
        console.note(
            f"Wrote {result.path} ({result.size_bytes / 1024:.0f} KiB, opset {result.opset})"
        )


@app.command()
def predict(
    paths: Annotated[
        list[str], typer.Argument(help="Image files, folders or glob patterns.", show_default=False)
    ],
    backend: Annotated[
        BackendName | None,
        typer.Option(
            help="Force a backend. \\[default: the model file's kind: .pt runs in torch, "
            ".onnx in onnxruntime]"
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Model file, .pt or .onnx. \\[default: params/best.pt, else "
            "exported/model.onnx; with --backend, that backend's file]",
        ),
    ] = None,
    device: Device = "auto",
    top_k: Annotated[
        int, typer.Option("--top-k", min=1, max=10, help="Show the K most likely digits.")
    ] = 1,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per image per line.")
    ] = False,
    raw: Annotated[
        bool, typer.Option(help="Images are MNIST-style 28x28 already: skip preprocessing.")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 256,
) -> None:
    """Read the digit in each image: photos, scans or drawings, any size and position.

    Unreadable, missing or blank images are reported on stderr; the others are still
    predicted, and the exit code is then 1.

    Example: mnist predict digits/ img.png --backend onnxruntime --top-k 3
    """
    from mnist_cli import console, prediction

    with _user_errors():
        from mnist_cli.backends import open_model

        engine = open_model(model, backend=backend, device=device)
        console.note(f"{engine.path}: {engine.name.value} on {engine.provider}")
        failures = 0
        with console.PredictionOutput(json_output=json_output, top_k=top_k) as output:
            for result in prediction.predict_paths(engine, paths, raw=raw, batch_size=batch_size):
                failures += result.error is not None
                output.add(result)
    if failures:
        raise typer.Exit(code=1)
