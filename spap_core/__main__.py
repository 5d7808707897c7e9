"""`python -m spap_core ...` and the `spap` command (see spap_core.cli)."""

import sys


def run() -> int:
    """The CLI's exit code. Importing torch and transformers takes seconds: a Ctrl-C then is one line too."""
    try:
        from spap_core.cli import main
    except KeyboardInterrupt:
        print("interrupted: stopped by Ctrl-C before the end; no output folder was written.", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
