"""The one subprocess wrapper never hands the user's terminal to a child: a `docker exec -i` run for a
version check would otherwise swallow the answer typed at stackops' own confirmation prompt."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

from tests.conftest import ROOT

CHILD = """
import sys
sys.path.insert(0, {lib!r})
from stackops.proc import Cmd, pipeline, run, text
assert text(Cmd(["cat"]), timeout=20) == ""            # run(): stdin is /dev/null, not the terminal
assert pipeline([Cmd(["cat"]), Cmd(["wc", "-c"])]) == 0  # pipeline's first process likewise
print("typed:", input())                               # what the user typed is still ours to read
"""


def test_children_get_dev_null_not_the_terminal_and_the_typed_answer_stays_ours() -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(lib=str(ROOT / "lib"))], stdin=secondary,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(secondary)
    os.write(primary, b"prod\n")  # typed before the children run: a child reading the tty would take it
    out, err = proc.communicate(timeout=60)
    os.close(primary)
    assert proc.returncode == 0, err
    assert "typed: prod" in out
