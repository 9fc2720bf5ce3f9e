"""`python -m mnist_cli` and the `mnist` command."""

import os
import sys


def main() -> None:
    """Load the command and run it (cli.run); Ctrl-C while Python loads it ends as any other
    (exit 130), without a traceback."""
    try:
        from mnist_cli.cli import run
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        os._exit(130)  # exits.EXIT_INTERRUPTED, not imported: that is what was interrupted
    run()


if __name__ == "__main__":
    main()
