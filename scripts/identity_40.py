"""A 40-step toremi run with the code on PYTHONPATH; then compare two such runs.

Why: the training-loop refactor (issue 20 item 3) must leave weights.jsonl and the final model
bit-identical. ``run TOKENS OUT [key=value...]`` trains; ``prep CORPUS TOKENS`` prepares a tiny
corpus; ``compare A B`` diffs weights.jsonl/metrics.jsonl (timing fields dropped) and the model
tensors of final/ and of the last checkpoint (exit 1 on any difference).
"""
import sys
from pathlib import Path

TIMING = {"tokens_per_s", "elapsed_s"}


def prep(corpus: str, tokens: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_bbc_corpus
    from toremi.prepare import PrepareConfig, prepare

    write_bbc_corpus(Path(corpus))
    prepare(PrepareConfig(corpus=Path(corpus), out=Path(tokens), tokenizer="bpe:512", seq_len=64,
                          topics_from="label", bpe_train_mb=1.0))


def run(tokens: str, out: str, *extra: str) -> None:
    from toremi.config import load_config
    from toremi.train import TrainConfig, train

    base = [f"tokens_dir={tokens}", f"out={out}", "steps=40", "batch_size=4", "accum=2", "log_every=5",
            "eval_every=10", "eval_batches=2", "progress=false", "optim.warmup_steps=4",
            "method.name=toremi", "method.interval=4", "ckpt_every=20", "keep_checkpoints=0", "compile=false"]
    train(load_config(TrainConfig, None, base + list(extra)))


def compare(a: str, b: str) -> int:
    import json

    import torch
    from safetensors.torch import load_file

    bad = 0
    for name in ("weights.jsonl", "metrics.jsonl"):
        ra = [json.loads(x) for x in (Path(a) / name).read_text().splitlines()]
        rb = [json.loads(x) for x in (Path(b) / name).read_text().splitlines()]
        strip = lambda rs: [{k: v for k, v in r.items() if k not in TIMING} for r in rs]  # noqa: E731
        same = strip(ra) == strip(rb)
        bad += not same
        print(f"{name}: {len(ra)} vs {len(rb)} records, identical (timing dropped): {same}")
    wa, wb = (Path(x) / "weights.jsonl" for x in (a, b))
    print(f"weights.jsonl byte-identical: {wa.read_bytes() == wb.read_bytes()}")
    dirs = [("final", Path(a) / "final", Path(b) / "final")]
    for ck in sorted((Path(a) / "checkpoints").glob("step-*")):
        dirs.append((ck.name, ck / "model", Path(b) / "checkpoints" / ck.name / "model"))
    for label, da, db in dirs:
        ta, tb = load_file(str(da / "model.safetensors")), load_file(str(db / "model.safetensors"))
        same = ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
        files = (da / "model.safetensors").read_bytes() == (db / "model.safetensors").read_bytes()
        bad += not same
        print(f"{label}: {len(ta)} tensors bit-identical: {same}; safetensors file byte-identical: {files}")
    for ck in sorted((Path(a) / "checkpoints").glob("step-*")):
        sa = torch.load(ck / "train_state.pt", weights_only=True)
        sb = torch.load(Path(b) / "checkpoints" / ck.name / "train_state.pt", weights_only=True)
        diff = _diff(sa, sb, "")
        bad += bool(diff)
        print(f"{ck.name}/train_state.pt identical: {not diff} {diff[:5]}")
    return 1 if bad else 0


def _diff(x, y, where):
    import torch

    # config holds the paths (out=...); Python's `random` is never seeded by toremi, so its state is
    # the process's own (seeded from os.urandom) and differs between any two runs; the same holds for
    # numpy's global RNG (the loader draws from its own seeded Generator)
    skip = {".config", ".rng.python", ".rng.numpy"}
    if isinstance(x, dict):
        if set(x) != set(y):
            return [f"{where}: keys {sorted(set(x) ^ set(y))}"]
        return [d for k in x if f"{where}.{k}" not in skip for d in _diff(x[k], y[k], f"{where}.{k}")]
    if isinstance(x, (list, tuple)):
        if len(x) != len(y):
            return [f"{where}: len"]
        return [d for i, (p, q) in enumerate(zip(x, y)) for d in _diff(p, q, f"{where}[{i}]")]
    if isinstance(x, torch.Tensor):
        return [] if isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y) else [where]
    return [] if x == y else [f"{where}: {x!r} != {y!r}"]


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "prep":
        prep(*args)
    elif cmd == "run":
        run(*args)
    else:
        sys.exit(compare(*args))
