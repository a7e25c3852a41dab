"""rkd.experiment.run_claim: one writer per run directory, released however its holder ends."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rkd.experiment.run_claim import CLAIM_FILE, RunDirInUse, claimed


def test_a_held_claim_refuses_a_second_writer_naming_the_holder(tmp_path):
    with claimed(tmp_path):
        assert (tmp_path / CLAIM_FILE).read_text() == str(os.getpid())
        with pytest.raises(RunDirInUse, match=f"pid {os.getpid()}") as err:
            with claimed(tmp_path):
                pass
        assert str(tmp_path) in str(err.value) and isinstance(err.value, FileExistsError)
    with claimed(tmp_path):  # released on exit: the directory can be claimed again
        pass


def test_a_claim_dies_with_its_process(tmp_path):
    """A holder killed without cleanup (SIGKILL) leaves no stale claim behind."""
    code = (f"import sys, time; from rkd.experiment.run_claim import claimed\n"
            f"with claimed({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirInUse, match=f"pid {holder.pid}"):
            with claimed(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with claimed(tmp_path):
        pass
