"""Checkpoints: ``run_dir/checkpoints/step-XXXXXXX/{model/, train_state.pt}``.

``model/`` is the HF GPT-2 format (exact weights, usable by any HF tool); ``train_state.pt`` holds
everything else a bit-for-bit resume needs: optimizer, scheduler, method, loader and RNG states,
counters, and the data hash/topic names that a resume is checked against. A checkpoint is written
into a temporary folder and renamed, so a folder named ``step-*`` is always complete.

``train_state.pt`` holds only tensors, plain containers, numbers and strings (RNG states included),
so it loads with ``torch.load(weights_only=True)``: a planted object that would run code when
unpickled is refused instead of executed.
"""

from __future__ import annotations

import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from toremi import layout
from toremi.config import flatten, to_dict
from toremi.model import GPT, load_hf, save_hf

PATTERN = re.compile(r"^step-(\d{7,})$")


def ckpt_dir(run_dir: Path, step: int) -> Path:
    return layout.run_checkpoint(run_dir, step)


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = layout.run_checkpoints(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if PATTERN.match(p.name) and (p / "train_state.pt").exists()]
    return sorted(found, key=lambda p: int(PATTERN.match(p.name).group(1)))


def latest(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


class UnsafeCheckpoint(ValueError):
    """A checkpoint that needs pickle (arbitrary code) to load."""


PLAIN = (torch.Tensor, int, float, bool, str, bytes, type(None))


def check_plain(obj, where: str = "state") -> None:
    """Raise TypeError on anything ``weights_only`` loading would refuse (caught at save time)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            check_plain(k, where)
            check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN):
        raise TypeError(f"{where} is a {type(obj).__name__}: a checkpoint may hold only tensors, "
                        f"containers, numbers and strings")


def rng_state() -> dict:
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, model: GPT, state: dict, keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep`` (0 = keep all)."""
    final = ckpt_dir(run_dir, step)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_hf(model, tmp / "model")
    full = {**state, "rng": rng_state()}
    check_plain(full)
    torch.save(full, tmp / "train_state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(path: Path, map_location="cpu") -> tuple[GPT, dict]:
    path = Path(path)
    return load_hf(path / "model", map_location=map_location), load_state(path / "train_state.pt")


def load_state(file: Path) -> dict:
    """``train_state.pt`` with ``weights_only=True``; a file that needs pickle is refused."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        what = str(exc).split("Unsupported global:")[-1].split("which")[0].strip(" .\n")[:120]
        raise UnsafeCheckpoint(
            f"{file}: refused: it holds a Python object that would run code when loaded ({what}); "
            f"toremi checkpoints hold only tensors and numbers. Do not resume a run dir you do not "
            f"trust; start a fresh run with another --out") from None


def check_compatible(state: dict, data_hash: str, topic_names: list[str], path: Path) -> None:
    """Refuse to resume on other data or another topic set, showing what differs."""
    if state["data_hash"] != data_hash:
        raise ValueError(f"cannot resume from {path}: the tokens dir changed (data hash "
                         f"{state['data_hash'][:12]} in the checkpoint, {data_hash[:12]} now) and no remap "
                         f"is given. Use the original tokens dir, a new --out, or (re-annotated documents) "
                         f"`toremi remap` and remap=FILE.")
    old, new = list(state["topic_names"]), list(topic_names)
    if old != new:
        added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
        detail = f"added {added}, removed {removed}" if added or removed else "same topics, new order"
        raise ValueError(f"cannot resume from {path}: the topic set changed ({detail}) and no remap is "
                         f"given. Use a new --out, or `toremi remap` and remap=FILE.")


# --- resuming with changed settings ---------------------------------------------------------
# Applied from the resume step (and logged); every other key is refused, since changing data,
# model, method, batch, seed or step budget mid-run would make the run a mix of two runs.
APPLIED = ("optim.", "eval_every", "eval_batches", "log_every", "ckpt_every", "keep_checkpoints",
           "max_bad_steps", "compile", "dtype", "tensorboard", "wandb")
IGNORED = ("out", "tokens_dir", "resume", "progress", "stop_at_step", "device", "remap")


def _flat(d: dict) -> dict:
    """Dotted keys of a saved config; an empty section (a method without options) is no key."""
    return {k: v for k, v in flatten(d).items() if v != {}}


def resume_changes(state: dict, cfg, path: Path, skip: tuple[str, ...] = ()) -> dict:
    """``{key: [old, new]}`` of the settings changed since the checkpoint; refused ones raise.
    ``skip``: key prefixes compared elsewhere (a layout-1 checkpoint's flat method options)."""
    if "config" not in state:  # written before configs were checkpointed: nothing to compare
        return {}
    old, new = _flat(state["config"]), _flat(to_dict(cfg))
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not k.startswith(IGNORED + skip)}
    refused = {k: v for k, v in changed.items() if not k.startswith(APPLIED)}
    if refused:
        what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"cannot resume from {path}: {what}; data, model, method, batch, seed and "
                         f"step budget are fixed for a run: use the original values or a new --out")
    return changed


def apply_optim(opt: torch.optim.Optimizer, sched, o) -> None:
    """Make the optimizer and LR schedule follow ``o`` (an OptimConfig) after a state load, which
    would otherwise restore the old learning rate, betas, eps and weight decay."""
    sched.base_lrs = [o.lr for _ in opt.param_groups]
    for g, lam in zip(opt.param_groups, sched.lr_lambdas):
        g["initial_lr"] = o.lr
        g["lr"] = o.lr * lam(sched.last_epoch)
        g["betas"], g["eps"] = (o.beta1, o.beta2), o.eps
    opt.param_groups[0]["weight_decay"] = o.weight_decay  # group 0 decays (GPT.configure_optimizer)
    sched._last_lr = [g["lr"] for g in opt.param_groups]
