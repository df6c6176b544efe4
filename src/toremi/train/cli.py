"""``toremi train --tokens DIR --out RUN_DIR [--config X.yaml] [--resume] [key.sub=value ...]``

Examples:
  toremi train --tokens out/tokens --out runs/toremi method=toremi steps=500
  toremi train --tokens out/tokens --out runs/authors method=toremi method.preset=authors
  torchrun --nproc_per_node 8 -m toremi.train.cli --tokens ... --out ... model=gpt2 tokens=2e9
Rerunning the same command resumes from the newest checkpoint in RUN_DIR.

Exit status: 0 finished; 75 interrupted (SIGTERM/SIGINT, stop_at_step) with a checkpoint written,
rerun to resume; 3 stopped on persistent non-finite loss (checkpoint written); 2 refused input.
"""

from __future__ import annotations

import sys

from toremi.stage import Stage
from toremi.train.config import TrainConfig


def method_sections() -> dict:
    """Each registered method's options as ``method.<name>.*`` (a new method's appear on their own)."""
    from toremi.methods import REGISTRY

    return {f"method.{n}": i.options for n, i in sorted(REGISTRY.items()) if i.options}


STAGE = Stage(
    # train() locks the run dir itself, on rank 0 only (every torchrun rank runs this entry)
    "train", TrainConfig, lock=lambda cfg: None, doc=__doc__,
    aliases={"--tokens": "tokens_dir", "--resume": "resume=must"},
    # `method=toremi` means `method.name=toremi`, `model=gpt2` means `model.size=gpt2`
    shorthands={"method": "method.name", "model": "model.size", "preset": "method.preset"},
    sections=method_sections, hidden=("method.opts",))


def parse(argv: list[str]) -> TrainConfig:
    return STAGE.parse(argv)


def main(argv: list[str] | None = None) -> int:
    return STAGE.run(list(sys.argv[1:] if argv is None else argv), _train)  # validated before torch loads


def _train(cfg: TrainConfig) -> int:
    from toremi.train import train

    run_dir = train(cfg)
    print(f"run dir: {run_dir}")
    return exit_code(run_dir)


def exit_code(run_dir) -> int:
    """0 when run.json says done, 75 when interrupted/stopped early, 3 on a divergence stop."""
    from pathlib import Path

    from toremi import layout
    from toremi.cli import EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_OK
    from toremi.io import read_json

    status = read_json(layout.run_info(run_dir)).get("status", "")
    if status == "done":
        return EXIT_OK
    return EXIT_DIVERGED if "non-finite" in status else EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
