"""Step-time benchmark of the reweighting engine: same model, same process, interleaved steps.

Variants (one model and optimizer, so only the loss/statistics code differs):
  plain     standard LM step: mean token CE, no topic machinery (what a non-reweighting trainer does)
  uniform   toremi's StepEngine with all weights 1 (the `uniform` method)
  toremi    StepEngine with non-trivial topic weights (K topics)
  toremi10k StepEngine with K=10,000 topics
  authors   the authors' per-sample Python loop (loss / padded length, a .item() per sample),
            eager (not compiled), as in their code
  uniform_packed / toremi_packed / toremi_packed_doc
            packed windows (per-token weights, per-segment statistics; _doc = document attention)
Plus the amortised cost of a K=10,000 ToReMi update (every 100 steps) as % of a step, host syncs
counted during one step of every StepEngine variant, and real target tokens/s (packed vs unpacked).

With ``--tokens DIR`` (a dir prepared with packing=docs) the unpacked and packed batches are real
windows of that dir (so their fill is the data's); otherwise synthetic: unpacked rows are documents
padded to ``--unpacked-fill`` of the window on average, packed rows hold documents back to back.

CPU default: python bench/train_step.py            (median of --steps timed steps per variant)
GPU:         bash bench/gpu_train.sh               (GPT-2 124M, T=1024, bf16, compiled, fused AdamW)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from toremi.data.loader import Batch  # noqa: E402
from toremi.methods import MethodConfig, build_method  # noqa: E402
from toremi.model import GPT, GPTConfig  # noqa: E402
from toremi.train.distributed import Dist, resolve_device  # noqa: E402
from toremi.train import segments  # noqa: E402
from toremi.train.step import StepEngine  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def synthetic_batches(n, b, t, vocab, k, max_topics, device, seed=0):
    """Random tokens; 1..max_topics random topics per sample; a few unlabelled; some padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (b, t + 1), generator=g)
        labels = ids[:, 1:].clone()
        labels[0, t // 2:] = -100  # one short sequence
        topics = torch.randint(0, k, (b, max_topics), generator=g)
        ntop = torch.randint(0, max_topics + 1, (b,), generator=g)
        topics[torch.arange(max_topics)[None, :] >= ntop[:, None]] = -1
        out.append(Batch(ids[:, :-1], labels, topics, torch.zeros(b, dtype=torch.long),
                         torch.arange(b)).to(device))
    return out


def synthetic_packed_batches(n, b, t, vocab, k, max_topics, device, mean_doc=200, seed=0):
    """Full windows of back-to-back documents (exponential lengths, mean ``mean_doc`` tokens)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (b, t + 1), generator=g)
        starts = torch.rand(b, t, generator=g) < 1.0 / mean_doc
        starts[:, 0] = False
        seg = starts.long().cumsum(1)
        seg = seg + torch.cat([torch.zeros(1, dtype=torch.long), (seg[:, -1] + 1).cumsum(0)[:-1]])[:, None]
        s = int(seg.max()) + 1
        topics = torch.randint(0, k, (s, max_topics), generator=g)
        ntop = torch.randint(0, max_topics + 1, (s,), generator=g)
        topics[torch.arange(max_topics)[None, :] >= ntop[:, None]] = -1
        out.append(Batch(ids[:, :-1], ids[:, 1:].clone(), topics[:b], torch.zeros(b, dtype=torch.long),
                         torch.arange(b), seg_ids=seg, seg_topics=topics,
                         seg_bytes=torch.full((s,), 4),
                         seg_domain=torch.zeros(s, dtype=torch.long)).to(device))
    return out


def real_batches(tokens, packing, n, b, device, seed=0):
    from toremi.data.loader import BatchLoader
    from toremi.data.shards import TokenDataset

    loader = BatchLoader(TokenDataset(tokens, packing=packing), b, seed=seed)
    return [loader.next_batch().to(device) for _ in range(n)]


def count_syncs(fn) -> int:
    """Tensor -> host conversions during ``fn()`` (the step tests count the same calls)."""
    calls, saved = [], {}
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        orig = saved[name] = getattr(torch.Tensor, name)

        def patched(self, *a, _orig=orig, **k):
            calls.append(1)
            return _orig(self, *a, **k)
        setattr(torch.Tensor, name, patched)
    try:
        fn()
    finally:
        for name, orig in saved.items():
            setattr(torch.Tensor, name, orig)
    return len(calls)


def plain_step(model, opt, fwd, batch, clip):
    loss = fwd(batch.input_ids, batch.labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)



def authors_loss(ce, topic_ids, weights, stats):
    """The released code's weighting: a Python loop over samples with one host sync per sample."""
    b, t = ce.shape
    losses = []
    for i in range(b):
        li = ce[i].sum() / t
        topics = [x for x in topic_ids[i].tolist() if x >= 0]
        w = sum(weights[x] for x in topics) / len(topics) if topics else 0.0
        for x in topics:
            stats.setdefault(x, []).append(li.item())
        losses.append(w * li)
    return torch.stack(losses).mean()

def authors_step(model, opt, batch, weights: list[float], stats: dict, amp, clip):
    """Re-implementation of the authors' loss: a Python loop over samples, host syncs per sample,
    loss divided by the padded length, unlabelled samples weight 0, mean (not weighted mean)."""
    with amp:
        logits = model(batch.input_ids)
    b, t = batch.labels.shape
    ce = F.cross_entropy(logits.float().view(b * t, -1), batch.labels.view(-1), ignore_index=-100,
                         reduction="none").view(b, t)
    loss = authors_loss(ce, batch.topic_ids, weights, stats)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def machinery_ms(engine: StepEngine, batch: Batch, reps: int = 100) -> tuple[float, float]:
    """Loss weighting + topic statistics of one step alone, given the per-token CE [B, T]:
    (ours: vectorised, sync-free; the authors' per-sample loop). Timed in isolation, so the
    comparison is robust to machine load, unlike whole-step ratios on a shared CPU (min of reps)."""
    from toremi.methods import rules

    b, t = batch.labels.shape
    ce = torch.rand(b, t, device=engine.dev, requires_grad=True)
    mask = batch.labels != -100
    weights, stats = engine.rw.w_dev.tolist(), {}

    def ours():
        n = mask.sum(1)
        l = (ce * mask).sum(1) / n.clamp(min=1)
        s = rules.sample_weights(engine.rw.w_dev, batch.topic_ids, 1.0) * (n > 0)
        loss = (s * l).sum() / s.sum().clamp(min=1e-12)
        valid = (n > 0) & torch.isfinite(l)
        rules.accumulate_topic_stats(engine.rw.loss_sum, engine.rw.count, l, batch.topic_ids, valid)
        win = engine.window
        rules.accumulate_topic_stats(win.topics["loss"], win.topics["count"], l, batch.topic_ids, valid)
        win.sums.token_loss += (l.detach().double() * n * valid).sum()
        return loss

    def authors():
        return authors_loss(ce, batch.topic_ids, weights, stats)
    out, threads = [], torch.get_num_threads()
    if engine.dev.type == "cpu":  # tiny ops: on a shared CPU, OpenMP barriers stall on idle threads
        torch.set_num_threads(1)
    for f in (ours, authors):
        for _ in range(5):
            f()
        out.append(min(timed(f, engine.dev) for _ in range(reps)) * 1e3)  # min: robust to load
    torch.set_num_threads(threads)
    return out[0], out[1]


def update_cost_ms(k: int, device, reps: int = 20) -> dict:
    """One interval update at K topics: read the stats, apply the rule, weights back to device."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for preset in ("paper", "authors"):
        m = build_method(MethodConfig(name="toremi", preset=preset, interval=100), k, 10_000)
        cnt = torch.randint(0, 5, (k,), generator=g).double().to(device)
        ls = (cnt * (3 + torch.rand(k, generator=g, dtype=torch.float64)).to(device))
        times = []
        for _ in range(reps):
            times.append(timed(lambda: m.update(100, ls, cnt) and m.topic_weights.to(device, torch.float32),
                               device))
        out[preset] = min(times) * 1e3
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="small-cpu")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--topics", type=int, default=41)
    ap.add_argument("--steps", type=int, default=11, help="timed steps per variant (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--variants", default="plain,uniform,toremi,toremi10k,authors,uniform_packed,"
                                          "toremi_packed,toremi_packed_doc")
    ap.add_argument("--tokens", help="prepared tokens dir (packing=docs): real unpacked/packed batches")
    ap.add_argument("--unpacked-fill", type=float, default=0.70,
                    help="synthetic unpacked rows: mean share of real targets (demo slice, GPT-2, T=1024: 0.70)")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 peak for MFU (auto on H100/H200/A100)")
    ap.add_argument("--json", default="out/bench/train_step.json")
    ap.add_argument("--smoke", action="store_true", help="tiny model, few steps (CPU check of this script)")
    a = ap.parse_args(argv)
    if a.smoke:
        a.model, a.seq, a.batch, a.vocab, a.steps, a.warmup = "tiny", 32, 4, 512, 5, 1
    device = resolve_device(a.device)
    compile_ = a.compile == "on" or (a.compile == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if a.tokens:
        from toremi.io import read_json

        m = read_json(Path(a.tokens) / "manifest.json")
        a.seq, a.vocab, a.topics = m["seq_len"], m["tokenizer"]["vocab_size"], max(1, len(m["topic_names"]))
    torch.manual_seed(0)
    model = GPT(GPTConfig.named(a.model, a.vocab, a.seq)).to(device)
    opt = model.configure_optimizer(6e-4, 0.1)
    d = Dist(device=device)
    variants = a.variants.split(",")
    bf16 = device.type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)

    engines, batches, steps = {}, {}, {}
    if a.tokens:
        batches["k"] = real_batches(a.tokens, "none", 32, a.batch, device)  # 32: a fair sample of the fill
        batches["packed"] = real_batches(a.tokens, "docs", 32, a.batch, device)
    else:
        batches["k"] = synthetic_batches(4, a.batch, a.seq, a.vocab, a.topics, 3, device)
        g = torch.Generator().manual_seed(5)
        for bt in batches["k"]:  # documents shorter than the window: pad to the unpacked fill
            keep = (torch.rand(a.batch, generator=g) * 2 * a.unpacked_fill).clamp(max=1.0) * a.seq
            bt.labels[torch.arange(a.seq)[None, :].to(device) >= keep.long()[:, None].to(device)] = -100
        batches["packed"] = synthetic_packed_batches(4, a.batch, a.seq, a.vocab, a.topics, 3, device)
    batches["10k"] = synthetic_batches(4, a.batch, a.seq, a.vocab, 10_000, 3, device, seed=1)
    cfg_u, cfg_t = MethodConfig(name="uniform"), MethodConfig(name="toremi")
    if "uniform" in variants:
        engines["uniform"] = StepEngine(model, opt, None, cfg_u, 1.0, a.topics, d, compile_, bf16)
        steps["uniform"] = lambda i: engines["uniform"].train_step([batches["k"][i % len(batches["k"])]])
    shared_fwd = lambda e: setattr(e, "fwd", engines["uniform"].fwd) if "uniform" in engines else None
    if "toremi" in variants:  # same model => same compiled forward+loss graph: compile it once
        e = engines["toremi"] = StepEngine(model, opt, None, cfg_t, 1.0, a.topics, d, compile_, bf16)
        shared_fwd(e)
        e.set_weights(0.1 + 4.9 * torch.rand(a.topics, dtype=torch.float64))
        steps["toremi"] = lambda i: engines["toremi"].train_step([batches["k"][i % len(batches["k"])]])
    if "toremi10k" in variants:
        e = engines["toremi10k"] = StepEngine(model, opt, None, cfg_t, 1.0, 10_000, d, compile_, bf16)
        shared_fwd(e)
        e.set_weights(0.1 + 4.9 * torch.rand(10_000, dtype=torch.float64))
        steps["toremi10k"] = lambda i: engines["toremi10k"].train_step([batches["10k"][i % 4]])
    for name, att, w in (("uniform_packed", "causal", None), ("toremi_packed", "causal", 1),
                         ("toremi_packed_doc", "doc", 1)):
        if name in variants:
            e = engines[name] = StepEngine(model, opt, None, cfg_t if w else cfg_u, 1.0, a.topics, d,
                                           compile_, bf16, attention=att)
            if att == "causal" and "uniform_packed" in engines:  # share the compiled packed graph
                e.fwd_packed = engines["uniform_packed"].fwd_packed
            if w:
                e.set_weights(0.1 + 4.9 * torch.rand(a.topics, dtype=torch.float64))
            steps[name] = (lambda e: lambda i: e.train_step([batches["packed"][i % len(batches["packed"])]]))(e)
    if "plain" in variants:
        def fwd(x, y):
            with amp:
                logits = model(x)
            return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        pfwd = torch.compile(fwd) if compile_ else fwd
        steps["plain"] = lambda i: plain_step(model, opt, pfwd, batches["k"][i % 4], 1.0)
    if "authors" in variants:
        w, stats = (0.1 + 4.9 * torch.rand(a.topics)).tolist(), {}
        steps["authors"] = lambda i: authors_step(model, opt, batches["k"][i % 4], w, stats, amp, 1.0)

    print(f"device={device} model={a.model} params={model.num_params() / 1e6:.1f}M T={a.seq} B={a.batch} "
          f"vocab={a.vocab}->{model.config.padded_vocab} compile={compile_} topics={a.topics}", flush=True)
    for name, fn in steps.items():  # warm-up (and compilation)
        t0 = time.perf_counter()
        for i in range(a.warmup):
            timed(lambda: fn(i), device)
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f}s", flush=True)
    times = {name: [] for name in steps}
    order = list(steps)
    for i in range(a.steps):  # interleaved, so machine-load drift hits every variant alike, and
        for name in (order if i % 2 == 0 else order[::-1]):  # each order half the time
            times[name].append(timed(lambda: steps[name](i), device))
    tokens = a.batch * a.seq
    real = {name: statistics.fmean(float((bt.labels != -100).sum()) for bt in batches["packed" if "packed" in name else "k"])
            for name in steps}
    peak = a.peak_tflops * 1e12 or next((v for k, v in PEAK_BF16.items()
                                         if device.type == "cuda" and k in torch.cuda.get_device_name()), 0)
    res = {"config": vars(a) | {"device": str(device), "compile": compile_, "params": model.num_params()},
           "variants": {}}
    for name, ts in times.items():
        med = statistics.median(ts)
        tps = tokens / med
        mfu = model.flops_per_token(a.seq) * tps / peak if peak else None
        rtps = real[name] / med
        res["variants"][name] = {"median_ms": med * 1e3, "min_ms": min(ts) * 1e3, "tokens_per_s": tps, "mfu": mfu,
                                 "real_target_tokens_per_s": rtps, "fill": real[name] / tokens,
                                 "all_ms": [round(x * 1e3, 3) for x in ts]}
        print(f"{name:>17}: {med * 1e3:9.2f} ms/step  {tps:12,.0f} tokens/s  {rtps:12,.0f} real target tokens/s "
              f"(fill {real[name] / tokens:.3f})" + (f"  MFU {mfu * 100:5.1f}%" if mfu else ""), flush=True)
    v = res["variants"]
    ratios = {}
    for num, den in (("toremi", "uniform"), ("toremi", "plain"), ("uniform", "plain"),
                     ("toremi10k", "toremi"), ("authors", "toremi"), ("toremi_packed", "uniform_packed"),
                     ("toremi_packed_doc", "toremi_packed"), ("uniform_packed", "uniform")):
        if num in v and den in v:
            ratios[f"{num}/{den}"] = v[num]["median_ms"] / v[den]["median_ms"]
            ratios[f"{num}/{den} (min)"] = v[num]["min_ms"] / v[den]["min_ms"]
            # paired: the median over iterations of the two variants' times in the same iteration
            ratios[f"{num}/{den} (paired)"] = statistics.median(x / y for x, y in zip(times[num], times[den]))
            print(f"  step-time ratio {num}/{den}: {ratios[f'{num}/{den}']:.3f} (median), "
                  f"{ratios[f'{num}/{den} (min)']:.3f} (min), {ratios[f'{num}/{den} (paired)']:.3f} (paired)")
    if "uniform_packed" in v and "uniform" in v:
        ratios["real tokens/s packed/unpacked"] = (v["uniform_packed"]["real_target_tokens_per_s"]
                                                   / v["uniform"]["real_target_tokens_per_s"])
        print(f"  real target tokens/s, packed/unpacked (uniform): {ratios['real tokens/s packed/unpacked']:.3f}")
    res["host_syncs_per_step"] = {}
    for name, e in engines.items():  # fused AdamW: the step itself must not read the device
        bt = batches["packed" if "packed" in name else ("10k" if name == "toremi10k" else "k")][0]
        res["host_syncs_per_step"][name] = count_syncs(lambda: e.train_step([bt]))
    print(f"  host syncs in one step: {res['host_syncs_per_step']}")
    if "toremi" in engines:  # how each scales with the batch (global batches are large on GPUs)
        res["machinery_by_batch"] = {}
        for bsz in (64, 512, 2048):
            bb = synthetic_batches(1, bsz, a.seq, a.vocab, a.topics, 3, device, seed=2)[0]
            ms, ms_authors = machinery_ms(engines["toremi"], bb, reps=20)
            res["machinery_by_batch"][bsz] = {"ms": ms, "authors_loop_ms": ms_authors}
            print(f"  weighting+stats alone at B={bsz}: {ms:.3f} ms; authors' loop {ms_authors:.3f} ms "
                  f"({ms_authors / ms:.1f}x)")
    if "toremi_packed" in engines:  # packed weighting + segment statistics alone, as % of a step
        e, bt = engines["toremi_packed"], batches["packed"][0]
        ce = torch.rand(bt.labels.shape, device=e.dev, requires_grad=True)
        s_n = len(bt.seg_topics)

        def packed_ours():
            s = segments.token_weights(e.rw.w_dev, bt.seg_topics, bt.seg_ids, 1.0)
            loss = (s * ce).sum() / s.sum()
            sl, sn = segments.segment_stats(ce, bt.seg_ids, s_n)
            segments.accumulate(e.rw.loss_sum, e.rw.count, sl, sn, bt.seg_topics, bt.seg_bytes)
            segments.accumulate(e.window.topics["loss"], e.window.topics["count"], sl, sn, bt.seg_topics,
                                bt.seg_bytes)
            return loss
        for _ in range(5):
            packed_ours()
        ms = min(timed(packed_ours, e.dev) for _ in range(50)) * 1e3
        pct = ms / v["toremi_packed"]["min_ms"] * 100
        res["machinery_toremi_packed"] = {"ms": ms, "pct_of_step_min": pct}
        print(f"  packed weighting+segment stats alone: {ms:.3f} ms = {pct:.4f}% of the fastest packed step")
    for name in ("toremi", "toremi10k"):
        if name in engines:
            ms, ms_authors = machinery_ms(engines[name], batches["10k" if name == "toremi10k" else "k"][0])
            pct = ms / v[name]["median_ms"] * 100
            res[f"machinery_{name}"] = {"ms": ms, "pct_of_step": pct, "authors_loop_ms": ms_authors}
            print(f"  weighting+stats alone ({name}): {ms:.3f} ms = {pct:.2f}% of a step; "
                  f"authors' per-sample loop: {ms_authors:.3f} ms ({ms_authors / ms:.1f}x)")
    upd = update_cost_ms(10_000, device)
    res["update_10k_ms"] = upd
    ref = v.get("toremi10k", v.get("toremi", next(iter(v.values()))))["median_ms"]
    res["update_10k_amortised_pct"] = {k: ms / 100 / ref * 100 for k, ms in upd.items()}
    for k, ms in upd.items():
        print(f"  K=10,000 update ({k} rule): {ms:.2f} ms, every 100 steps = "
              f"{res['update_10k_amortised_pct'][k]:.3f}% of a step")
    res["ratios"] = ratios
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
