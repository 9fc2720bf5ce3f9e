"""The `mnist` command: parses options, calls one core function, shows the result."""

# No `from __future__ import annotations`: Typer would then eval every annotation at start-up.
import warnings
from pathlib import Path
from typing import Annotated

import typer

from mnist_cli import __version__
from mnist_cli.exits import EXIT_INTERRUPTED, end_now, user_errors, watch_interrupts
from mnist_cli.options import (
    DATA_DIR,
    EXPORT_FILE,
    EXPORT_INT8_FILE,
    RUN_DIR,
    Architecture,
    BackendName,
    ExportFormat,
    Quantization,
)
from mnist_cli.train.recipes import recipe_default

app = typer.Typer(
    name="mnist",
    help="Handwritten digit recognition: download MNIST, train, test, export, predict, serve.\n\n"
    "Example: mnist download && mnist train && mnist test",
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mnist {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Handwritten digit recognition: download MNIST, train, test, export, predict, serve.

    Example: mnist download && mnist train && mnist test
    """
    # Pixels and scores are checked (finite, in range) and a bad file gets its own line; what a
    # library notes on the way ("Tag data larger than file") would print raw beside it.
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="(numpy|mnist_cli)")


DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="MNIST_DATA_DIR",
        show_envvar=True,
        help="Folder holding MNIST (as torchvision lays it out).",
    ),
]
Device = Annotated[
    str,
    typer.Option(
        "--device",
        "-d",
        help="auto, cpu, cuda, cuda:N or mps (auto: an accelerator if present).",
    ),
]
ModelFile = Annotated[
    Path | None,
    typer.Option(
        "--model",
        "-m",
        help="Model file: a .pt checkpoint (runs in torch) or .onnx (runs in onnxruntime). "
        "\\[default: exported/model.onnx if it is the export of params/best.pt, else "
        "params/best.pt, else exported/model.onnx, else the bundled model]",
    ),
]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print results and errors only: no notes, no bars.")
]


def _probability(value: float) -> float:
    if not 0.0 <= value <= 1.0:  # also NaN, which a range check lets through
        raise typer.BadParameter(f"{value} is not a probability from 0 to 1")
    return value


MinConfidence = Annotated[
    float,
    typer.Option(
        "--min-confidence",
        callback=_probability,
        help="Also refuse a digit read with less than this probability (0 to 1), for more "
        "caution, and a number with such a digit whole. \\[default: refuse only what is over "
        "30% likely no digit]",
        show_default=False,
    ),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print results as JSON for scripts.")]


def _recipe(field: str, help: str, *names: str) -> object:
    """An option that replaces one field of the recipe; its help shows the recipes' values."""
    return typer.Option(*names, help=f"{help} \\[default: {recipe_default(field)}]")


def _picture(option: str, what: str) -> object:
    return typer.Option(option, help=f"Save {what} as a PNG picture at this path.")


@app.command()
def download(
    data_dir: DataDir = DATA_DIR,
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            envvar="MNIST_FROM",
            show_envvar=True,
            help="Import the four files from this local folder (gzip or not).",
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(help="Check the files against the official MD5s (--no-verify for a subset)."),
    ] = True,
    quiet: Quiet = False,
) -> None:
    """Download the four MNIST files, or import them with --from.

    Files already present and valid are left as they are; an official file is never replaced.

    Example: mnist download --from ~/Downloads/mnist
    """
    from mnist_cli import console
    from mnist_cli import download as core

    with user_errors(quiet=quiet):
        if source is not None:
            outcomes = core.import_mnist(data_dir, source, verify_md5=verify)
        else:
            with console.DownloadProgress() as progress:
                outcomes = core.download_mnist(data_dir, on_progress=progress)
        console.show_downloads(outcomes)


@app.command()
def train(
    ctx: typer.Context,
    arch: Annotated[
        Architecture | None,
        typer.Option(
            "--arch",
            "-a",
            help="Network: cnn (the strongest) or fc (the tutorial's). \\[default: cnn]",
        ),
    ] = None,
    epochs: Annotated[
        int | None, _recipe("epochs", "Passes over the training images.", "--epochs", "-n")
    ] = None,
    batch_size: Annotated[
        int | None,
        _recipe(
            "batch_size",
            "Images per step, across all processes under torchrun.",
            "--batch-size",
            "-b",
        ),
    ] = None,
    lr: Annotated[
        float | None, _recipe("lr", "Peak learning rate of the one-cycle schedule.", "--lr")
    ] = None,
    seed: Annotated[
        int | None,
        _recipe("seed", "Seed for weights, validation split and batch order.", "--seed"),
    ] = None,
    augment: Annotated[
        bool | None,
        _recipe(
            "augment",
            "After the first epoch (fine-tuning: from the first): style strokes (flagged 1s, "
            "crossed 7s, slashed 0s), "
            "thicker and thinner strokes, rotations, scalings and shifts.",
            "--augment/--no-augment",
        ),
    ] = None,
    validation_size: Annotated[
        int | None,
        _recipe(
            "validation_size",
            "MNIST training images held out to pick best.pt (fine-tuning: to calibrate it).",
            "--validation-size",
        ),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            "-i",
            help="Fine-tune --init on your own labelled digits: a folder holding 0/ ... 9/ "
            "subfolders of image files, or a CSV file of `file,label` rows (as `mnist test "
            "--images` reads, and `serve --collect` writes). A part of them picks best.pt; "
            "MNIST from --data-dir is replayed beside the rest. Its recipe: the fine-tuning "
            "values above.",
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            help="The model --images fine-tunes: `bundled` (the one shipped) or a .pt "
            "checkpoint such as params/best.pt.",
        ),
    ] = None,
    device: Device = "auto",
    data_dir: DataDir = DATA_DIR,
    out_dir: Annotated[
        Path,
        typer.Option(
            "--out-dir",
            "-o",
            envvar="MNIST_OUT_DIR",
            show_envvar=True,
            help="Folder for last.pt, best.pt, history.csv, history.png and config.toml.",
        ),
    ] = RUN_DIR,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from OUT_DIR/last.pt with its saved options."),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Start again in an OUT_DIR that holds a run; its files are replaced when the "
            "new run saves its first epoch.",
        ),
    ] = False,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile", help="torch.compile the network (opt-in: no gain measured for the cnn)."
        ),
    ] = False,
    quiet: Quiet = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also print every value of the recipe.")
    ] = False,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Read the recipe from this TOML file (as --print-config writes it, and as each "
            "run keeps in OUT_DIR/config.toml); options given here win over it.",
        ),
    ] = None,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config", help="Print the resolved recipe as a --config file, and stop."
        ),
    ] = False,
) -> None:
    """Train a model: OUT_DIR/last.pt every epoch, best.pt at the best validation score.

    Each epoch also writes OUT_DIR/history.csv, history.png and config.toml (the recipe).

    Ctrl-C or SIGTERM saves OUT_DIR/last.pt; --resume continues from there.

    Several processes (DistributedDataParallel): torchrun --nproc-per-node 2 -m mnist_cli train

    Fine-tune on your own digits: mnist train --images my-digits/ --init bundled

    Example: mnist train --device cuda --epochs 30
    """
    from mnist_cli import console
    from mnist_cli.errors import OptionError, TrainingDiverged, TrainingInterrupted

    chosen = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "augment": augment,
        "validation_size": validation_size,
    }
    with user_errors(quiet=quiet):
        from mnist_cli.train import training
        from mnist_cli.train.distributed import is_main_process

        given = [f"--{k.replace('_', '-')}" for k, v in chosen.items() if v is not None]
        given += ["--arch"] if arch else []
        given += ["--images"] if images else []
        given += ["--init"] if init else []
        given += ["--config"] if config_file else []
        given += ["--print-config"] if print_config else []
        if resume and given:
            raise OptionError(f"--resume continues with the saved options; drop {', '.join(given)}")
        from mnist_cli.train.recipes import config_toml, read_config_file

        from_file = read_config_file(config_file) if config_file else {}
        arch_given = arch is not None or "arch" in from_file
        name = arch.value if arch else from_file.pop("arch", "cnn")
        if ctx.get_parameter_source("device").name == "DEFAULT":
            device = from_file.pop("device", device)
        from_file.pop("device", None)
        # What a fine-tuning run starts from: given here, else as a fine-tuning run's file says.
        given_here = {"images": str(images or ""), "init": init or ""}
        start = {key: value or from_file.pop(key, "") for key, value in given_here.items()}
        options = {**from_file, **{k: v for k, v in chosen.items() if v is not None}}
        options = {k: v for k, v in options.items() if k not in start}
        try:
            if resume:
                config = None
            elif any(start.values()):
                from mnist_cli.train.finetune import finetune_config

                network = {"architecture": name} if arch_given else {}
                config = finetune_config(**start, device=device, **network, **options)
            else:
                config = training.default_config(name, device, **options)
        except (ValueError, TypeError) as error:
            raise OptionError(str(error)) from None
        if print_config:
            from mnist_cli.devices import resolve_device

            console.print_text(config_toml(config, str(resolve_device(device))))
            return
        where = {"data_dir": data_dir, "out_dir": out_dir, "device": device}
        how = {"resume": resume, "compile": compile, "overwrite": overwrite}
        if not is_main_process():  # under torchrun only rank 0 speaks, but for its own failures
            console.set_quiet(True)
            try:
                training.train(config, **where, **how)
            except (TrainingInterrupted, TrainingDiverged) as said_by_rank_0:
                raise typer.Exit(code=said_by_rank_0.exit_code) from None
            return
        with console.TrainProgress(verbose=verbose) as progress:
            result = training.train(config, **where, **how, callback=progress)
        console.show_training(result)


@app.command()
def test(
    model_file: ModelFile = None,
    data_dir: DataDir = DATA_DIR,
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            "-i",
            envvar="MNIST_IMAGES_DIR",
            show_envvar=True,
            help="Test on your own labelled digits instead: a folder holding 0/ ... 9/ "
            "subfolders of image files (torchvision's ImageFolder layout), or a CSV file of "
            "`file,label` rows. Each misread file is named.",
        ),
    ] = None,
    device: Device = "auto",
    json_output: JsonOutput = False,
    errors: Annotated[Path | None, _picture("--errors", "a grid of the misread digits")] = None,
    plot: Annotated[Path | None, _picture("--plot", "the confusion matrix")] = None,
    quiet: Quiet = False,
) -> None:
    """Evaluate a model on the 10,000 MNIST test images, or on your own digits (--images).

    --errors saves a grid of the misclassified digits, --plot the confusion matrix.

    Example: mnist test --model exported/model.onnx --errors errors.png --plot confusion.png
    """
    from mnist_cli import console
    from mnist_cli.errors import MnistError

    with user_errors(quiet=quiet):
        from mnist_cli.infer import evaluation

        for option, path in (("--errors", errors), ("--plot", plot)):
            if path is not None:
                evaluation.check_image_path(path, option=option)
        if plot is not None:  # the train extra's: refused before the evaluation, not after
            import matplotlib  # noqa: F401
        report, wrong = evaluation.evaluate_model(
            model_file, data_dir=data_dir, device=device, images_dir=images
        )
        if errors is not None:
            evaluation.save_error_grid(wrong, errors)
            console.note(f"Saved {report.errors} misclassified digits to {errors}")
        if plot is not None:
            evaluation.save_confusion_plot(report, plot)
            console.note(f"Saved the confusion matrix to {plot}")
        console.show_report(report, json_output=json_output)
        for path, problem in report.skipped:
            console.print_error(MnistError(f"{path}: {problem}"))
    if report.skipped:
        raise typer.Exit(code=1)


@app.command()
def export(
    format: Annotated[
        ExportFormat, typer.Option("--format", "-f", help="Output format.")
    ] = ExportFormat.onnx,
    model: Annotated[
        Path,
        typer.Option("--model", "-m", help="The .pt checkpoint to export (made by mnist train)."),
    ] = Path("params/best.pt"),
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="File to write. \\[default: exported/model.onnx; with --quantize int8, "
            "exported/model-int8.onnx]",
        ),
    ] = None,
    opset: Annotated[
        int, typer.Option(min=18, help="ONNX opset: 18 up to what the installed onnx knows.")
    ] = 18,
    quantize: Annotated[
        Quantization | None,
        typer.Option(help="int8: static quantisation calibrated on 1,000 training images."),
    ] = None,
    data_dir: DataDir = DATA_DIR,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace an existing OUT that `mnist export` did not write."
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Export a checkpoint to one self-contained ONNX file, checked against torch first.

    Input `image`: float32 N x 1 x 28 x 28 pixels in [0, 1]; outputs `logits`, `probabilities`.

    Checked with onnx.checker and onnxruntime on 1,000 test images; on failure nothing is written.

    Example: mnist export --format onnx --out exported/model.onnx
    """
    from mnist_cli import console

    with user_errors(quiet=quiet):
        from mnist_cli.train import export as core

        if out is None:
            out = EXPORT_INT8_FILE if quantize else EXPORT_FILE
        result = core.export_onnx(
            model, out, opset=opset, data_dir=data_dir, quantize=quantize, overwrite=overwrite
        )
        console.show_export(result)


@app.command()
def predict(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Image files, folders or glob patterns. \\[default: the sample images "
            "shipped in the package]",
            show_default=False,
        ),
    ] = None,
    model_file: ModelFile = None,
    backend: Annotated[
        BackendName | None,
        typer.Option(
            "--backend",
            help="Force a backend. \\[default: the model file's kind: .pt runs in torch, "
            ".onnx in onnxruntime]",
        ),
    ] = None,
    device: Device = "auto",
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k",
            "-k",
            min=1,
            max=10,
            help="Show the K most likely digits of each digit read (in the table; --json gives "
            "every digit's probability).",
        ),
    ] = 1,
    json_output: Annotated[
        bool, typer.Option("--json", help="One JSON object per image per line.")
    ] = False,
    raw: Annotated[
        bool,
        typer.Option("--raw", help="Images are MNIST-style 28x28 already: skip preprocessing."),
    ] = False,
    single: Annotated[
        bool,
        typer.Option(
            "--single", help="Each image holds one digit: read it whole, find no number in it."
        ),
    ] = False,
    min_confidence: MinConfidence = 0.0,
    show: Annotated[
        bool,
        typer.Option(
            "--show", "-s", help="Draw the 28x28 digit the model saw beside its top guesses."
        ),
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Images per model call.")
    ] = 256,
    quiet: Quiet = False,
) -> None:
    """Read the digits in each image: a digit or a number, photographed, scanned or drawn.

    Digits are found left to right (lines top to bottom); what is no digit, such as a letter
    or a scribble, is refused ("-" and "not a digit"), never guessed.

    A bad image costs one line on stderr; the others are still read, and the exit code is 1.

    Example: mnist predict digits/ number.png --top-k 3 --show
    """
    from mnist_cli import console
    from mnist_cli.infer import prediction

    with user_errors(quiet=quiet):
        from mnist_cli.infer.backends import open_model

        model = open_model(model_file, backend=backend, device=device)
        console.show_model(model)
        if not paths:
            paths = [prediction.SAMPLES]
            console.note(f"No images given: reading the samples shipped in {prediction.SAMPLES}")
        failures = 0
        with console.PredictionOutput(json_output=json_output, top_k=top_k, show=show) as output:
            for result in prediction.predict_paths(
                model,
                [str(p) for p in paths],
                raw=raw,
                single=single,
                min_confidence=min_confidence,
                batch_size=batch_size,
                keep_digits=show,
            ):
                failures += result.error is not None
                output.add(result)
    if failures:
        raise typer.Exit(code=1)


@app.command()
def serve(
    model_file: ModelFile = None,
    backend: Annotated[
        BackendName | None,
        typer.Option("--backend", help="Force a backend. \\[default: the model file's kind]"),
    ] = None,
    device: Device = "auto",
    host: Annotated[
        str,
        typer.Option(help="Address to listen on. Only this machine can connect to 127.0.0.1."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port.")] = 8000,
    max_upload: Annotated[int, typer.Option(min=1024, help="Largest request body, in bytes.")] = 4
    << 20,
    max_images: Annotated[
        int, typer.Option(min=1, help="Most images in one multipart request.")
    ] = 64,
    max_pixels: Annotated[
        int,
        typer.Option(
            min=10_000, help="Most pixels one request may decode, all its images together."
        ),
    ] = 4_000_000,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="Another name clients may reach this server by (the Host header), "
            "such as a proxy's; repeat for more. \\[default: localhost, 127.0.0.1 and [::1] "
            "on a loopback --host, any name elsewhere]",
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log", help="Log one line per request (uvicorn's access log).")
    ] = False,
    collect: Annotated[
        Path | None,
        typer.Option(
            "--collect",
            help="Let the page's users correct a misread digit: POST /feedback saves the image "
            "as COLLECT/<digit>/<time>-<hash>.png, ready for `mnist test --images COLLECT` "
            "and `mnist train --images COLLECT --init bundled`.",
        ),
    ] = None,
    collect_max: Annotated[
        int, typer.Option(min=1, help="Most images --collect holds; then /feedback answers 507.")
    ] = 2000,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            max=64,
            help="Processes answering on the one port, for machines with more cores; each "
            "opens the model itself. /metrics counts the process that answers.",
        ),
    ] = 1,
    quiet: Quiet = False,
) -> None:
    """Serve a draw-a-digit page and an HTTP API for the model.

    GET / is the page; POST /predict takes an image (or multipart files) and answers JSON.

    GET /health and GET /metrics are for whoever runs it; Ctrl-C or SIGTERM stops it.
    With --collect, the page offers "Wrong? It is a ..." and POST /feedback saves corrections.

    Example: mnist serve --port 8000   (then open http://127.0.0.1:8000)
    """
    from mnist_cli import console

    with user_errors(quiet=quiet):
        from mnist_cli.infer import server
        from mnist_cli.infer.backends import open_model
        from mnist_cli.infer.httpguard import Limits, allowed_hosts_for

        model = open_model(model_file, backend=backend, device=device)
        console.show_model(model)
        corrections = None
        if collect is not None:
            from mnist_cli.files import check_writable
            from mnist_cli.infer.feedback import Corrections

            check_writable(collect / "0" / "probe.png", option="--collect")
            corrections = Corrections(collect, collect_max)
        sock = server.listen(host, port)
        console.note(f"Serving on http://{host}:{port} (Ctrl-C to stop)")
        settings = {
            "limits": Limits(max_upload=max_upload, max_images=max_images, max_pixels=max_pixels),
            "log_level": "warning" if quiet else "info",
            "allowed_hosts": allowed_hosts_for(host, allowed_host or ()),
            "access_log": access_log,
            "corrections": corrections,
        }
        if workers > 1:
            from mnist_cli.infer.workers import serve_workers

            serve_workers(model, sock, workers, device=device, **settings)
        else:
            server.serve(model, sock, **settings)


def run() -> None:
    """The `mnist` command: the app, ended at once after Ctrl-C (exits.end_now), wherever the
    interrupt landed (in a library's import it surfaces as another error)."""
    interrupted = watch_interrupts()
    try:
        app(prog_name="mnist")
    except SystemExit as done:
        if done.code == EXIT_INTERRUPTED:
            end_now(EXIT_INTERRUPTED)
        raise
    except Exception:
        if not interrupted():
            raise
        from mnist_cli import console

        console.err.print("Interrupted.")
        end_now(EXIT_INTERRUPTED)
