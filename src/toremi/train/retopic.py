"""Resume a run on a re-annotated tokens dir (another k, other labels) through a ``toremi remap`` file.

Re-annotating changes the topic set and the data hash, not the documents or their tokens, so the
model, optimizer, schedule and step count carry over; only the per-topic state has to be carried
to the new topics. ``toremi train --tokens NEW --out RUN remap=MAP.json`` (MAP.json from ``toremi
remap --old OLD --new NEW --run RUN``) does that at the resume, through the recorded matrix M
(``toremi.remap.map_vector``: a new topic's value = the document-weighted mean of its documents'
old values):

- the method's ``weights``: mapped (M @ [w, 1]); its sampling ``probs``: mapped (M @ [p, 1/K_old])
  and renormalised over the topics the new data has (toremi-sampling recomputes them from the
  mapped weights at its next update). A method whose weights are a function of the data and its
  options (``Method.rebuilds_on_remap``: uniform, stratified, oracle, replay) keeps the state it was
  built with on the new data instead;
- per-topic epochs (the loader's tokens seen, the weight-scaled tokens): each old topic's epochs
  (tokens seen / its tokens available, from run.json) are mapped and multiplied by the new topics'
  tokens available: an estimate, marked so in run.json (the unlabelled column uses the epochs of
  all labelled tokens);
- RESET, each named in a logged line: the method's other per-topic statistics (ToReMi-noise's
  loss history, ODM's rewards, DoReMi's α: their meaning is tied to the old topics' losses), and
  the open interval's and log window's partial sums (at most one interval of statistics). State
  that is not per topic (ToReMi's validation-loss history and stage switch) is kept.

The data order continues from the same position of the same permutation (same seed): with the
same documents, tokenizer and seq_len the sequences are the same, so the stream is the same one.
Refused, one line each (exit 2): another tokenizer or seq_len; a remap file whose old side is not
the checkpoint's data and topics, or whose new side is not this tokens dir. Every remapped resume
is appended to ``remaps`` in run.json and the checkpoint (step, file, coverage, weights before and
after, what was reset).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from toremi import layout
from toremi.io import read_json
from toremi.remap import load_mapping, map_vector, run_hashes


def adapt(st: dict, trainer, path: Path) -> dict:
    """``st`` unchanged when the checkpoint is on this data; mapped through ``trainer.cfg.remap``
    when the tokens dir was re-annotated; refused (ValueError, one line) otherwise."""
    from toremi.train import checkpoint

    ds = trainer.ds
    if st["data_hash"] == ds.data_hash and list(st["topic_names"]) == list(ds.topic_names):
        return st
    info_path = layout.run_info(trainer.run_dir)
    info = read_json(info_path) if info_path.exists() else {}
    _check_tokenizer(info, ds, path)
    if not trainer.cfg.remap:
        checkpoint.check_compatible(st, ds.data_hash, ds.topic_names, path)  # raises, naming the change
    mapping = load_mapping(trainer.cfg.remap)
    _check_mapping(mapping, st, ds, path)
    return _map_state(st, mapping, info, trainer, path)


def _check_tokenizer(info: dict, ds, path: Path) -> None:
    old, new = info.get("tokenizer") or {}, ds.manifest.get("tokenizer") or {}
    if old.get("fingerprint") != new.get("fingerprint") or info.get("seq_len", ds.seq_len) != ds.seq_len:
        raise ValueError(f"cannot resume from {path} on {ds.dir}: tokenizer {old.get('name')} "
                         f"(fingerprint {str(old.get('fingerprint'))[:12]}, seq_len {info.get('seq_len')}) in the "
                         f"run, {new.get('name')} ({str(new.get('fingerprint'))[:12]}, seq_len {ds.seq_len}) now; a "
                         f"re-annotated tokens dir must be prepared with the run's tokenizer and seq_len")


def _check_mapping(mapping: dict, st: dict, ds, path: Path) -> None:
    f, old, new = mapping["path"], mapping["old"], mapping["new"]
    old_hashes = {old.get("data_hash")}
    old_man = layout.tokens_manifest(old.get("path") or "")
    if old_man.exists():
        old_hashes |= run_hashes(read_json(old_man))
    if st["data_hash"] not in old_hashes or list(old["topic_names"]) != list(st["topic_names"]):
        raise ValueError(f"remap={f} maps from data {str(old.get('data_hash'))[:12]} ({len(old['topic_names'])} "
                         f"topics), but {path} was trained on {st['data_hash'][:12]} ({len(st['topic_names'])} "
                         f"topics); run `toremi remap --old <the run's tokens dir> --new {ds.dir} --run ...`")
    if new.get("data_hash") != ds.manifest.get("data_hash") or list(mapping["topic_names"]) != list(ds.topic_names):
        raise ValueError(f"remap={f} maps to data {str(new.get('data_hash'))[:12]} ({len(mapping['topic_names'])} "
                         f"topics), but --tokens {ds.dir} is {str(ds.manifest.get('data_hash'))[:12]} "
                         f"({len(ds.topic_names)} topics); remap onto this tokens dir")


def _renorm(p: np.ndarray, present: np.ndarray) -> np.ndarray:
    p = np.where(present, np.clip(p, 0, None), 0.0)
    return p / p.sum() if p.sum() > 0 else present / max(present.sum(), 1)


def _map_state(st: dict, mapping: dict, info: dict, trainer, path: Path) -> dict:
    k_old, k_new = len(st["topic_names"]), trainer.K
    rw_old, fresh = st["reweighter"], trainer.rw.state_dict()
    m_old, m_new = rw_old["method"], fresh["method"]
    present = trainer.method.present.numpy()
    reset = []
    method = dict(m_new, stage=m_old["stage"], updates=m_old["updates"])
    if not getattr(trainer.method, "rebuilds_on_remap", False):
        method["weights"] = torch.from_numpy(map_vector(mapping, m_old["weights"].double().numpy()))
        if m_old.get("probs") is not None:
            mapped = map_vector(mapping, m_old["probs"].double().numpy(), 1.0 / max(k_old, 1))
            method["probs"] = torch.from_numpy(_renorm(mapped, present))
        extra = dict(m_new.get("extra") or {})  # per-topic entries: the fresh ones (reset)
        for k, v in (m_old.get("extra") or {}).items():
            if isinstance(v, torch.Tensor) and v.dim() and v.shape[-1] == k_old:
                reset.append(f"method.{k}")
            else:  # run-level (ToReMi's validation history, its switch step): kept
                extra[k] = v
        method["extra"] = extra
    # epochs: old topics' epochs mapped, times the new topics' tokens available (an estimate)
    loader = dict(st["loader"])
    avail_old = info.get("topic_tokens_available")
    avail_new = trainer.loader.topic_available
    seen = loader.get("topic_tokens")
    new_seen = np.zeros(k_new + 1)
    new_wtok = torch.zeros(k_new, dtype=torch.float64)
    if avail_old is not None and len(avail_old) == k_old and seen is not None:
        a = np.asarray(avail_old, dtype=np.float64)
        s = seen.double().numpy()
        e_all = float(s[:k_old].sum() / max(a.sum(), 1e-300))
        ep = np.where(a > 0, s[:k_old] / np.maximum(a, 1e-300), 0.0)
        new_seen[:k_new] = map_vector(mapping, ep, e_all) * avail_new[:k_new]
        new_seen[k_new] = s[k_old] if len(s) > k_old else 0.0
        w_ep = np.where(a > 0, rw_old["weighted_tokens"].double().numpy() / np.maximum(a, 1e-300), 0.0)
        w_all = float(rw_old["weighted_tokens"].sum() / max(a.sum(), 1e-300))
        new_wtok = torch.from_numpy(map_vector(mapping, w_ep, w_all) * avail_new[:k_new])
    else:
        reset.append("epoch counters (run.json records no topic_tokens_available)")
    partial = [k for k, v in rw_old["stats"].items() if float(v.abs().sum()) > 0]
    reset += [f"interval sums ({', '.join(partial)})"] if partial else []
    n = len(trainer.ds)
    epoch, pos = int(loader["epoch"]), int(loader["position"])
    if pos >= n:
        epoch, pos = epoch + 1, 0
    loader.update(data_hash=trainer.ds.data_hash, epoch=epoch, position=pos,
                  topic_probs=method["probs"] if trainer.method.uses_sampling else None,
                  topic_tokens=torch.from_numpy(new_seen))
    eng = st["engine"]
    engine = {k: (torch.zeros_like(getattr(trainer.engine, k)).cpu() if k != "bad" else v) for k, v in eng.items()}
    record = {"step": st["step"], "remap": mapping["path"], "coverage": mapping["coverage"],
              "from": {"data_hash": st["data_hash"], "topics": k_old},
              "to": {"data_hash": trainer.ds.data_hash, "topics": k_new},
              "weights_before": [round(float(x), 8) for x in m_old["weights"]],
              "weights_after": [round(float(x), 8) for x in method["weights"]],
              "rebuilt": bool(getattr(trainer.method, "rebuilds_on_remap", False)),
              "epochs": "estimated through the mapping" if "epoch counters" not in " ".join(reset) else "reset",
              "reset": reset}
    if trainer.d.is_main:
        print(f"[toremi train] resume at step {st['step']} on a re-annotated tokens dir ({k_old} -> {k_new} topics, "
              f"coverage {mapping['coverage'].get('documents')} of documents) through {mapping['path']}; "
              f"reset: {', '.join(reset) or 'nothing'}", flush=True)
    out = dict(st, data_hash=trainer.ds.data_hash, topic_names=list(trainer.ds.topic_names), loader=loader,
               engine=engine, remaps=list(st.get("remaps", [])) + [record])
    out["reweighter"] = dict(fresh, method=method, steps=rw_old["steps"], weighted_tokens=new_wtok)
    return out
