"""`python -m zlbfast` is the `zlbfast` command."""

import sys

from zlbfast.cli import main

sys.exit(main())
