"""Ray for the corpus-scale paths (``engine.name=ray``): connecting, streaming maps, tree reduces.

The same code runs on a local Ray (``engine.address=""``: started here with ``engine.num_cpus``
CPUs) and on a cluster (``engine.address=auto`` on a node of it, or ``ray://head:10001`` from
outside; see docs/scale.md). What the driver may hold is bounded by design: per-shard items go
out, per-shard *small* results come back (row counts), and anything bigger (per-cluster sums,
keyword counts) is combined by a tree of Ray tasks in the object store, so only the final
per-cluster aggregate reaches the driver.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Literal
from urllib.parse import urlparse


class EngineError(RuntimeError):
    """Ray is missing or the cluster does not answer; the message says what to do."""


@dataclasses.dataclass
class EngineConfig:
    name: Literal["local", "ray"] = "local"
    address: str = ""           # "" = start a local Ray; "auto" = the cluster this node is in; ray://host:port
    num_cpus: int = 2           # local Ray only: CPUs it may use
    concurrency: int = 0        # embedding actors (0 = one per GPU, else CPUs - 1, at least 1)
    batch_rows: int = 4096      # rows per embedding batch (one Ray Data batch)
    timeout_s: float = 30.0     # a cluster address that does not answer within this -> one-line error

    def __post_init__(self):
        if self.num_cpus < 1 or self.concurrency < 0 or self.batch_rows < 1 or self.timeout_s <= 0:
            raise ValueError("engine: num_cpus, batch_rows >= 1; concurrency >= 0; timeout_s > 0")


def as_engine(value) -> EngineConfig:
    """``engine=ray`` (the old string form) and ``engine.name=ray`` mean the same."""
    if isinstance(value, EngineConfig):
        return value
    if value not in ("local", "ray"):
        raise ValueError(f"engine: {value!r} is not one of ['local', 'ray']")
    return EngineConfig(name=value)


# ---------------------------------------------------------------- connecting
def _probe(address: str, timeout: float) -> None:
    """Does a Ray head answer at ``address`` within ``timeout``? The GCS and the Ray Client server
    both speak gRPC, so an HTTP/2 preface must get a SETTINGS frame back: an address that does not
    answer is one line, not minutes of Ray's own retries."""
    url = urlparse(address if "://" in address else f"gcs://{address}")
    host, port = url.hostname, url.port or (10001 if url.scheme == "ray" else 6379)
    if not host:
        raise EngineError(f"engine.address={address!r}: use ray://HOST:PORT, HOST:PORT or auto")
    why = ""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            head = sock.recv(9)
            if len(head) < 4 or head[3] != 4:
                why = "it is not a Ray head (no gRPC reply)"
    except socket.timeout:
        why = "no reply"
    except OSError as exc:
        why = exc.strerror or str(exc)
    if why:
        raise EngineError(f"engine.address={address}: no Ray cluster answers at {host}:{port} within "
                          f"{timeout:g}s ({why}); start one with `ray start --head` or fix the address")


def connect(cfg: EngineConfig):
    """Import Ray and connect (or start a local Ray); returns the ``ray`` module."""
    if cfg.address:  # Ray core's own connection-retry warnings: the one line is ours
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EngineError("engine.name=ray needs Ray Data: pip install 'toremi[ray]'") from None
    if ray.is_initialized():
        return ray
    address = cfg.address or None
    src = str(Path(__file__).resolve().parent)
    env_vars = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if address:  # a cluster: ship this package to every node (its dependencies must be installed there)
        kwargs = {"runtime_env": {"py_modules": [src], "env_vars": env_vars}}
        if address != "auto":
            _probe(address, cfg.timeout_s)
    else:
        pp = os.pathsep.join(p for p in (str(Path(src).parent), os.environ.get("PYTHONPATH", "")) if p)
        kwargs = {"num_cpus": cfg.num_cpus, "include_dashboard": False,
                  "runtime_env": {"env_vars": {**env_vars, "PYTHONPATH": pp}}}
    err: list[BaseException] = []

    def init():
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False,
                     ignore_reinit_error=True, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below as one line
            err.append(exc)

    if address:  # joining a cluster spawns no processes, so a thread can bound the wait
        logging.getLogger("ray._private.worker").setLevel(logging.ERROR)  # "SIGTERM handler not set"
        t = threading.Thread(target=init, daemon=True)
        t.start()
        t.join(cfg.timeout_s)
    else:  # a local Ray's processes die with the thread that started them: main thread only
        init()
    if address and t.is_alive():
        raise EngineError(f"engine.address={address or 'local'}: Ray did not connect within "
                          f"{cfg.timeout_s:g}s; check the address and that the cluster is up (`ray start --head`)")
    if err:
        first = str(err[0]).strip().splitlines()[0] if str(err[0]).strip() else type(err[0]).__name__
        raise EngineError(f"engine.address={address or 'local'}: {first}") from None
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


def cluster_cpus(ray) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus(ray) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


# ---------------------------------------------------------------- streaming maps and reduces
def _encode(obj) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def _apply(fn: Callable, tag: str):
    def run(batch: dict) -> dict:
        out = []
        for i, blob in zip(batch["i"], batch["item"]):
            fault_point(f"{tag}-{int(i)}")
            out.append(_encode(fn(json.loads(blob))))
        return {"i": batch["i"], "result": out}
    return run


def map_items(ray, fn: Callable, items: list[dict], tag: str, num_cpus: float = 1):
    """A Ray Data dataset of ``fn(item)`` per item (one block per item, retried if a worker dies).
    Items are small JSON dicts (paths and settings); results stay in the object store until read."""
    rows = [{"i": i, "item": json.dumps(it)} for i, it in enumerate(items)]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    return ds.map_batches(_apply(fn, tag), batch_size=1, batch_format="numpy", num_cpus=num_cpus)


def stream_small(ds) -> Iterator[tuple[int, object]]:
    """Results of ``map_items`` one at a time as they finish (use only for small results)."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for i, blob in zip(batch["i"], batch["result"]):
            yield int(i), pickle.loads(blob)


def tree_reduce(ray, ds, combine: Callable[[list], object], finish: Callable[[object], object],
                fan_in: int = 8):
    """Combine the results of ``map_items`` with Ray tasks, streaming. Each output block is folded
    as it is produced, and at most ``fan_in`` partials are alive at a time, so neither the object
    store nor the driver holds all the per-shard results. Only ``finish(total)`` (a small,
    per-cluster object) comes back to the driver. ``combine`` must be associative and order-free."""
    from ray.data.block import BlockAccessor

    @ray.remote(max_retries=3)
    def leaf(block) -> object:
        return combine([pickle.loads(b) for b in BlockAccessor.for_block(block).to_numpy("result")])

    @ray.remote(max_retries=3)
    def node(*parts) -> object:
        return combine(list(parts))

    @ray.remote(max_retries=3)
    def last(part) -> object:
        return finish(part)

    pending: list = []
    for bundle in ds.iter_internal_ref_bundles():
        for ref in bundle.block_refs:
            pending.append(leaf.remote(ref))
            if len(pending) >= fan_in:
                pending = [node.remote(*pending)]
    if not pending:
        return finish(combine([]))
    return ray.get(last.remote(node.remote(*pending) if len(pending) > 1 else pending[0]))


# ---------------------------------------------------------------- fault points (tests)
def fault_point(tag: str) -> None:
    """Test hook for the worker-kill and driver-kill tests: if ``$TOREMI_FAULT_DIR/pause-<tag>``
    exists, this worker claims it, writes its pid to ``paused-<tag>.pid`` and waits (up to 120 s)
    to be killed from outside. A no-op otherwise (one ``os.environ`` lookup)."""
    root = os.environ.get("TOREMI_FAULT_DIR")
    if not root:
        return
    flag = Path(root) / f"pause-{tag}"
    try:
        os.rename(flag, Path(root) / f"claimed-{tag}")  # atomic: one worker claims it, once
    except OSError:
        return
    (Path(root) / f"paused-{tag}.pid").write_text(str(os.getpid()))
    deadline = time.time() + 120
    while time.time() < deadline and not (Path(root) / f"release-{tag}").exists():
        time.sleep(0.05)
