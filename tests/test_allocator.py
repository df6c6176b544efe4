"""toremi.allocator sets glibc's thresholds once per process, and TOREMI_MALLOC=default opts out."""

import os
import subprocess
import sys

import pytest

CODE = ("from toremi.allocator import keep_large_allocations_in_heap as k; "
        "print(k(), k())")


def run(env_extra: dict) -> str:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_thresholds_set_once_and_opt_out():
    assert run({}) == "True True"
    assert run({"TOREMI_MALLOC": "default"}) == "False False"
