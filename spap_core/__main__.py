"""`python -m spap_core ...` entry point (see spap_core.cli)."""

import sys

try:  # importing torch and transformers takes seconds: Ctrl-C then is one line too
    from spap_core.cli import main
except KeyboardInterrupt:
    print("interrupted: stopped by Ctrl-C before the end; no output folder was written.", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
