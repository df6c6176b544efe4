"""toremi.allocator sets glibc's thresholds once per process, TOREMI_MALLOC=default opts out of the
training policy, and the ingest policy (1 MiB threshold) is accepted by glibc."""

import os
import subprocess
import sys

import pytest

CODE = ("from toremi.allocator import keep_large_allocations_in_heap as k; "
        "from toremi.allocator import return_large_allocations_at_once as r; print(k(), k(), r())")


def run(env_extra: dict) -> str:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_thresholds_set_once_and_opt_out():
    assert run({}) == "True True True"
    assert run({"TOREMI_MALLOC": "default"}) == "False False True"  # the opt-out is training's only
