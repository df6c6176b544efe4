"""Ray Data engine: the same per-shard maps as the in-process engine, run as Ray tasks.

Items and results travel as pickled bytes in one binary column, so any result (sparse count
matrices included) crosses Ray Data without Arrow conversion, and results come back in item
order. Ray is optional: ``pip install 'toremi[ray]'``. Without an address, a local Ray is started
with ``num_cpus`` workers and no dashboard.
"""

from __future__ import annotations

import os
import pickle


def _run(batch: dict) -> dict:
    out = []
    for blob in batch["payload"]:
        fn, item = pickle.loads(blob)
        out.append(pickle.dumps(fn(item)))
    return {"i": batch["i"], "payload": out}


class RayEngine:
    name = "ray"

    def __init__(self, num_cpus: int = 2, address: str | None = None):
        try:
            import ray
            import ray.data  # noqa: F401
        except ImportError:
            raise ImportError("engine=ray needs Ray Data: pip install 'toremi[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
                p for p in (src, os.environ.get("PYTHONPATH", "")) if p), "HF_HUB_OFFLINE": "1"}}
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     ignore_reinit_error=True, log_to_driver=False, runtime_env=env,
                     configure_logging=False)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        self.num_cpus = num_cpus

    def map(self, fn, items: list[dict], desc: str) -> list:
        if not items:
            return []
        rows = [{"i": i, "payload": pickle.dumps((fn, it))} for i, it in enumerate(items)]
        ds = self.ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(_run, batch_size=1, batch_format="numpy", num_cpus=1)
        got = sorted(ds.take_all(), key=lambda r: int(r["i"]))
        if len(got) != len(items):
            raise RuntimeError(f"ray {desc}: {len(got)} results for {len(items)} shards")
        return [pickle.loads(r["payload"]) for r in got]

    def shutdown(self) -> None:
        self.ray.shutdown()
