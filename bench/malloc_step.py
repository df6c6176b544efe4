"""CPU step time with glibc's default allocator settings vs ``toremi.allocator`` (same process).

The default phase runs first (the setting cannot be undone once applied), after a warm-up, so
both phases see warm caches. Prints median step times, the ratio, and the kernel (sys) CPU time
per step, which is where the difference comes from (page faults on freshly mmapped tensors).

    python bench/malloc_step.py [--steps 60] [--batch 16] [--seq 128] [--vocab 4096] [--size tiny]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from toremi.allocator import keep_large_allocations_in_heap  # noqa: E402
from toremi.model import GPT, GPTConfig  # noqa: E402
from toremi.model_sizes import SIZES  # noqa: E402


def phase(model, opt, batches) -> tuple[list[float], float]:
    times, sys0 = [], resource.getrusage(resource.RUSAGE_SELF).ru_stime
    for ids in batches:
        t0 = time.perf_counter()
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return times, (resource.getrusage(resource.RUSAGE_SELF).ru_stime - sys0) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--size", default="tiny", choices=list(SIZES))
    a = ap.parse_args()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=a.vocab, block_size=a.seq, **SIZES[a.size]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [torch.randint(0, a.vocab, (a.batch, a.seq + 1)) for _ in range(a.steps)]
    phase(model, opt, batches[:10])  # warm-up
    base, base_sys = phase(model, opt, batches)
    applied = keep_large_allocations_in_heap()
    tuned, tuned_sys = phase(model, opt, batches)
    mb, mt = statistics.median(base), statistics.median(tuned)
    logits_mib = a.batch * a.seq * a.vocab * 4 / 2**20
    print(f"{a.size}, batch {a.batch}x{a.seq}, vocab {a.vocab} (logits {logits_mib:.0f} MiB), "
          f"{torch.get_num_threads()} threads, {a.steps} steps per phase; allocator set: {applied}")
    print(f"default glibc: median step {mb * 1e3:7.1f} ms, sys CPU {base_sys * 1e3:6.1f} ms/step")
    print(f"toremi.allocator: median step {mt * 1e3:7.1f} ms, sys CPU {tuned_sys * 1e3:6.1f} ms/step")
    print(f"step time ratio tuned/default: {mt / mb:.3f}  (speed-up {mb / mt:.2f}x)")


if __name__ == "__main__":
    main()
