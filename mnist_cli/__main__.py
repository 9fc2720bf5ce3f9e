from mnist_cli.cli import app

app(prog_name="mnist")
