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

import argparse
import sys

from toremi.config import flags_to_overrides, load_config

# Shorthands: `method=toremi` means `method.name=toremi`, `model=gpt2` means `model.size=gpt2`.
SHORTHANDS = {"method": "method.name", "model": "model.size", "preset": "method.preset"}


def config_keys() -> str:
    """Every config key with its default, for --help."""
    import dataclasses

    from toremi.config import flatten, to_dict
    from toremi.train.config import TrainConfig

    from toremi.methods import REGISTRY, MethodConfig

    defaults = to_dict(TrainConfig())
    methods = []
    for name, info in sorted(REGISTRY.items()):  # every registered method and its own options
        try:
            opts = to_dict(MethodConfig(name=name).opts) or {}
        except ValueError:  # a method with required options: show the dataclass defaults
            opts = {f.name: f.default for f in dataclasses.fields(info.options)}
        keys = " ".join(f"{k}={v}" for k, v in opts.items()) or "none"
        methods.append(f"  {name} (interval {info.interval}): {info.summary}\n    method.{name}.: {keys}")
    return "config keys (defaults):\n" + "\n".join(f"  {k}={v}" for k, v in flatten(defaults).items()) + \
        "\n\nmethods (method=NAME; options as method.NAME.KEY=V or method.KEY=V):\n" + "\n".join(methods)


def parse(argv: list[str]):
    from toremi.train.config import TrainConfig

    ap = argparse.ArgumentParser(prog="toremi train", description=__doc__, epilog=config_keys(),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", help="prepared tokens dir (toremi prepare)")
    ap.add_argument("--out", help="run dir (created; resumed if it holds checkpoints)")
    ap.add_argument("--config", help="YAML file with TrainConfig fields")
    ap.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    ap.add_argument("overrides", nargs="*", help="key.sub=value (e.g. method=toremi optim.lr=3e-4)")
    a = ap.parse_args(argv)
    flags = {"tokens": "tokens_dir", "out": "out", "resume": "resume=must"}
    return load_config(TrainConfig, a.config, flags_to_overrides(a, flags, shorthands=SHORTHANDS))


def main(argv: list[str] | None = None) -> int:
    cfg = parse(list(sys.argv[1:] if argv is None else argv))  # validated before torch loads
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
