"""The `mnist` command: parses options, calls one core function, shows the result."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from mnist_cli import __version__

app = typer.Typer(
    name="mnist",
    help="Handwritten digit recognition: download MNIST, train, test, export, predict.\n\n"
    "Example: mnist download && mnist train && mnist test",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)

EXIT_INTERRUPTED = 130


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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mnist {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Handwritten digit recognition: download MNIST, train, test, export, predict.

    Example: mnist download && mnist train && mnist test
    """


DataDir = Annotated[
    Path, typer.Option("--data-dir", help="Folder holding MNIST (as torchvision lays it out).")
]
Device = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps (auto: an accelerator if present).")
]


@app.command()
def download(
    data_dir: DataDir = Path("datafiles"),
    source: Annotated[
        Optional[Path],
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
    from mnist_cli import console, download as core

    with _user_errors():
        if source is not None:
            outcomes = core.import_mnist(data_dir, source, verify_md5=verify)
        else:
            with console.DownloadProgress() as progress:
                outcomes = core.download_mnist(data_dir, on_progress=progress)
    for outcome in outcomes:
        state = "already present and valid" if outcome.status == "present" else outcome.status
        console.note(f"{outcome.name}: {state} ({outcome.path})")


@app.command()
def train(
    model: Annotated[
        Optional[str], typer.Option(help="Architecture: cnn (default, strongest) or fc (the tutorial's net).")
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the training images. [default: cnn 8, fc 20]")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per optimiser step. [default: 256]")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of the one-cycle schedule. [default: cnn 4e-3, fc 1e-3]")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for weights, validation split and batch order. [default: 0]")] = None,
    validation_size: Annotated[Optional[int], typer.Option(help="Training images held out to pick best.pt. [default: 5000]")] = None,
    device: Device = "auto",
    data_dir: DataDir = Path("datafiles"),
    out: Annotated[Path, typer.Option(help="Folder for last.pt and best.pt.")] = Path("params"),
    resume: Annotated[
        bool, typer.Option(help="Continue from OUT/last.pt with its saved options.")
    ] = False,
) -> None:
    """Train a model; save OUT/last.pt every epoch and OUT/best.pt at the best validation score.

    Ctrl-C saves OUT/last.pt; --resume continues from there.

    Example: mnist train --device cuda --epochs 30
    """
    from mnist_cli import console
    from mnist_cli.errors import MnistError

    chosen = {"model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
              "validation_size": validation_size}
    given = [f"--{k.replace('_', '-')}" for k, v in chosen.items() if v is not None]
    if resume and given:
        console.print_error(MnistError(
            f"--resume continues with the saved options; drop {', '.join(given)}",
        ))
        raise typer.Exit(code=2)
    with _user_errors():
        from mnist_cli import training

        try:
            config = None if resume else training.default_config(
                model or "cnn", **{k: v for k, v in chosen.items() if k != "model"}
            )
        except (ValueError, TypeError) as error:
            console.print_error(MnistError(str(error)))
            raise typer.Exit(code=2) from None
        with console.TrainProgress() as progress:
            result = training.train(
                config, data_dir=data_dir, out_dir=out, device=device, resume=resume,
                callback=progress,
            )
    console.note(
        f"Best validation accuracy {result.best_val_accuracy:.2%} at epoch {result.best_epoch}: "
        f"{result.best_path}"
    )


@app.command()
def test(
    model: Annotated[Path, typer.Option("--model", help="Checkpoint to evaluate.")] = Path("params/best.pt"),
    data_dir: DataDir = Path("datafiles"),
    device: Device = "auto",
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    errors: Annotated[
        Optional[Path], typer.Option(help="Save a PNG grid of the misclassified digits here.")
    ] = None,
) -> None:
    """Evaluate a model on the 10,000 MNIST test images.

    Example: mnist test --model params/best.pt --errors errors.png
    """
    from mnist_cli import console

    with _user_errors():
        from mnist_cli import evaluation

        report, wrong = evaluation.evaluate_checkpoint(model, data_dir=data_dir, device=device)
        if errors is not None:
            evaluation.save_error_grid(wrong, errors)
    if json_output:
        console.print_json(report.to_dict())
    else:
        console.show_report(report)
    if errors is not None:
        console.note(f"Saved {report.errors} misclassified digits to {errors}")
