"""Runs the C unit tests (tests/c: endpoint table, LB policies, QSBR stress)
under ASan/UBSan and checks their summary line.

The C tests print one line per test and end with "<P> passed, <F> failed";
`make` exits non-zero on any failure, sanitizer report or crash.
"""

import os
import re
import shutil
import subprocess

import pytest

C_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "c")


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("gcc") is None, reason="needs make and gcc")
def test_c_units_pass_under_sanitizers():
    proc = subprocess.run(
        ["make", "-C", C_DIR, "test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    out = proc.stdout
    summary = re.findall(r"^(\d+) passed, (\d+) failed$", out, re.MULTILINE)
    assert proc.returncode == 0, out[-8000:]
    assert summary, "no summary line in:\n" + out[-8000:]
    passed, failed = map(int, summary[-1])
    assert failed == 0, out[-8000:]
    # Every test binary reports; a silently skipped binary would lower this.
    assert passed >= 25, out[-8000:]
