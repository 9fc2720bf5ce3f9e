from mnist_cli.cli import run

run()
