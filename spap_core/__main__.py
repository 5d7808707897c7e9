"""`python -m spap_core ...` entry point (see spap_core.cli)."""

import sys

from spap_core.cli import main

sys.exit(main())
