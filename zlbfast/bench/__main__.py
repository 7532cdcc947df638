"""`python -m zlbfast.bench [options]` runs the same thing as `zlbfast bench`."""

import argparse
import sys

from zlbfast.bench.cli import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m zlbfast.bench")
add_arguments(parser)
sys.exit(run(parser.parse_args()))
