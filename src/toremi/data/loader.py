"""Deterministic, resumable batches over a ``TokenDataset``.

Every rank computes the same *global* batch of sequence indices from the same state and takes its
slice, so ranks never disagree and the state is tiny: ``(epoch, position, generator state,
topic probabilities)``. Saving and restoring it reproduces an uninterrupted run batch for batch.

Two modes:
- ``shuffle`` (the natural distribution): a seeded permutation per epoch, walked in order.
- ``topic``: after ``set_topic_probs(p)``, a topic is drawn from ``p`` for every slot and then a
  sequence uniformly among that topic's sequences (unlabelled sequences keep their natural share).
  Sampling-based methods (stratified, ODM, ToReMi-as-sampling) drive this.

Packed windows (``packing=docs``) hold pieces of several documents. Topic sampling then draws
*windows*: a window's topics are the union of its segments' topics, each with its token share
(a segment with m topics gives each 1/m of its tokens); a topic is drawn from ``p`` and then a
window among those carrying it with probability proportional to that topic's share in it, so the
expected share of topic-k tokens follows ``p`` while every window stays full. Unlabelled tokens
keep their natural share. (Drawing documents instead would mean packing at load time and a state
that grows with the batch; windows keep the state tiny and resume exact.)

Epoch accounting: the loader knows every global index it draws (all ranks draw the same), so it
counts, per topic, the target tokens drawn (``topic_tokens`` [K+1], last slot = unlabelled) with
one ``bincount`` per batch on the host: exact over ranks, no device read, and in the state so a
resume continues the count. A sequence (or window piece) with m topics credits each 1/m of its
tokens, the convention packed sampling already uses. ``max_repetition`` caps topic sampling: a
topic whose drawn tokens reached ``cap x its tokens in the split`` is left out of the next draws
(the others renormalise); it can overshoot by at most one global batch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from toremi.data.shards import TokenDataset


@dataclass
class Batch:
    input_ids: torch.Tensor   # [B, T] long
    labels: torch.Tensor      # [B, T] long, -100 where there is no target
    topic_ids: torch.Tensor   # [B, M] long, -1 padding
    domain_ids: torch.Tensor  # [B] long
    sample_index: torch.Tensor  # [B] long, row in the dataset index
    target_bytes: torch.Tensor | None = None  # [B] long, UTF-8 bytes of the targets
    # packed windows only (toremi.data.packing): the segment map, numbered over the batch
    seg_ids: torch.Tensor | None = None     # [B, T] long, segment of each target; -1 = no target
    seg_topics: torch.Tensor | None = None  # [S, M] long, -1 padding (document topics)
    seg_bytes: torch.Tensor | None = None   # [S] long, UTF-8 bytes of each segment's targets
    seg_domain: torch.Tensor | None = None  # [S] long

    def to(self, device: torch.device | str, non_blocking: bool = True) -> "Batch":
        return Batch(**{f.name: None if getattr(self, f.name) is None else
                        getattr(self, f.name).to(device, non_blocking=non_blocking)
                        for f in fields(self)})


class BatchLoader:
    def __init__(self, dataset: TokenDataset, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, max_repetition: float | None = None):
        if len(dataset) == 0:
            raise ValueError(f"{dataset.dir}: split {dataset.split!r} has no sequences")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.ds = dataset
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.topic_probs: torch.Tensor | None = None
        self._perm: np.ndarray | None = None
        self._build_topic_buckets()
        self._build_token_table()
        self.max_repetition = max_repetition
        self.topic_tokens = np.zeros(self.ds.num_topics + 1, dtype=np.float64)  # drawn so far

    # -- epoch accounting: CSR of row -> (bucket, target tokens credited) -----------------------
    def _build_token_table(self) -> None:
        """Per row (sequence or packed window): the target tokens each topic is credited with."""
        k = self.ds.num_topics
        if self.ds.packed:
            from toremi.data.packing import topic_shares

            p = self.ds.pack
            seg_len = np.asarray(p["seg_len"])
            win, bucket, share = topic_shares(np.asarray(p["seg_ptr"]), seg_len,
                                              np.asarray(p["seg_doc"]), np.asarray(p["doc_topics"]), k)
            win_of_seg = np.repeat(np.arange(len(self.ds)), np.diff(np.asarray(p["seg_ptr"])))
            win_tokens = np.bincount(win_of_seg, weights=seg_len, minlength=len(self.ds))
            tokens = share * np.maximum(win_tokens, 1)[win]  # topic_shares sorts by (window, bucket)
        else:
            topics = self.ds.topics if self.ds.topics.ndim == 2 and self.ds.topics.shape[1] else \
                np.full((len(self.ds), 1), -1)
            m = (topics >= 0).sum(1)
            n = np.maximum(self.ds.length.astype(np.int64) - 1, 0)  # targets: all but the first token
            bucket = np.where(topics >= 0, topics, -1).astype(np.int64)
            bucket[:, 0] = np.where(m == 0, k, bucket[:, 0])
            win, cols = np.nonzero(bucket >= 0)  # row-major: sorted by row
            bucket = bucket[win, cols]
            tokens = (n / np.maximum(m, 1))[win]
        self._tok_ptr = np.concatenate([[0], np.cumsum(np.bincount(win, minlength=len(self.ds)))])
        self._tok_bucket, self._tok_count = bucket.astype(np.int64), tokens.astype(np.float64)
        self.topic_available = np.bincount(self._tok_bucket, weights=self._tok_count, minlength=k + 1)

    def _count(self, indices: np.ndarray) -> None:
        """topic_tokens += the tokens of rows ``indices`` per topic (vectorised over the CSR)."""
        lo, hi = self._tok_ptr[indices], self._tok_ptr[indices + 1]
        n = hi - lo
        entries = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
        self.topic_tokens += np.bincount(self._tok_bucket[entries], weights=self._tok_count[entries],
                                         minlength=len(self.topic_tokens))

    def under_cap(self) -> np.ndarray:
        """[K] bool: topics whose drawn tokens are still below ``max_repetition`` x available."""
        k = self.ds.num_topics
        if self.max_repetition is None:
            return np.ones(k, dtype=bool)
        return self.topic_tokens[:k] < self.max_repetition * self.topic_available[:k]

    @property
    def epochs(self) -> np.ndarray:
        """[K] effective epochs so far: tokens drawn / tokens in the split (0 where it has none)."""
        k = self.ds.num_topics
        avail = self.topic_available[:k]
        return np.where(avail > 0, self.topic_tokens[:k] / np.maximum(avail, 1e-300), 0.0)

    # -- topic buckets: CSR of topic -> sequence rows, last bucket = unlabelled -----------------
    def _build_topic_buckets(self) -> None:
        if self.ds.packed:
            return self._build_packed_buckets()
        self._bucket_cum = None
        topics = self.ds.topics
        num_topics = self.ds.num_topics
        rows, cols = np.nonzero(topics >= 0)
        bucket = topics[rows, cols].astype(np.int64)
        unlabelled = np.nonzero((topics < 0).all(axis=1))[0]
        bucket = np.concatenate([bucket, np.full(len(unlabelled), num_topics)])
        members = np.concatenate([rows, unlabelled])
        order = np.argsort(bucket, kind="stable")
        self._bucket_members = torch.from_numpy(members[order].astype(np.int64))
        counts = np.bincount(bucket, minlength=num_topics + 1)
        self._bucket_counts = torch.from_numpy(counts.astype(np.int64))
        self._bucket_starts = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]))
        self._unlabelled_share = len(unlabelled) / len(self.ds)

    def _build_packed_buckets(self) -> None:
        """Buckets of (window, topic token share); the last bucket holds unlabelled tokens."""
        from toremi.data.packing import topic_shares

        p, k = self.ds.pack, self.ds.num_topics
        win, bucket, share = topic_shares(np.asarray(p["seg_ptr"]), np.asarray(p["seg_len"]),
                                          np.asarray(p["seg_doc"]), np.asarray(p["doc_topics"]), k)
        order = np.lexsort((win, bucket))
        self._bucket_members = torch.from_numpy(win[order].astype(np.int64))
        self._bucket_cum = torch.from_numpy(np.cumsum(share[order]))
        counts = np.bincount(bucket, minlength=k + 1)
        mass = np.bincount(bucket, weights=share, minlength=k + 1)
        self._bucket_counts = torch.from_numpy(counts.astype(np.int64))
        self._bucket_starts = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]))
        self._bucket_base = torch.from_numpy(np.concatenate([[0.0], np.cumsum(mass)[:-1]]))
        self._bucket_mass = torch.from_numpy(mass)
        self._unlabelled_share = float(mass[k] / max(mass.sum(), 1e-300))

    def set_topic_probs(self, probs: torch.Tensor | None) -> None:
        """Sample topics by ``probs`` from the next batch on (``None``: back to shuffling)."""
        if probs is None:
            self.topic_probs = None
            return
        probs = torch.as_tensor(probs, dtype=torch.float64).detach().cpu()
        if probs.shape != (self.ds.num_topics,):
            raise ValueError(f"topic probabilities have shape {tuple(probs.shape)}, "
                             f"the data has {self.ds.num_topics} topics")
        if not torch.isfinite(probs).all() or (probs < 0).any() or probs.sum() <= 0:
            raise ValueError("topic probabilities must be finite, non-negative and not all zero")
        self.topic_probs = probs / probs.sum()

    # -- index generation -----------------------------------------------------------------------
    def _permutation(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.ds), generator=g).numpy()

    def _shuffled_indices(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            if self._perm is None:
                self._perm = self._permutation(self.epoch)
            take = self._perm[self.position:self.position + n]
            out.append(take)
            n -= len(take)
            self.position += len(take)
            if self.position >= len(self._perm):
                self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        return np.concatenate(out)

    def _capped_probs(self) -> torch.Tensor:
        """The topic probabilities renormalised over the topics under the cap (all of them capped:
        the cap cannot hold any more, so the method's own probabilities are used)."""
        if self.max_repetition is None:
            return self.topic_probs
        p = self.topic_probs * torch.from_numpy(self.under_cap())
        return p / p.sum() if p.sum() > 0 else self.topic_probs

    def _topic_indices(self, n: int) -> np.ndarray:
        share = self._unlabelled_share
        probs = torch.cat([self._capped_probs() * (1 - share), torch.tensor([share], dtype=torch.float64)])
        probs = probs * (self._bucket_counts > 0)
        buckets = torch.multinomial(probs, n, replacement=True, generator=self.generator)
        u = torch.rand(n, generator=self.generator, dtype=torch.float64)
        if self._bucket_cum is not None:  # packed: a window with probability ∝ the topic's share in it
            pos = torch.searchsorted(self._bucket_cum, self._bucket_base[buckets] + u * self._bucket_mass[buckets],
                                     right=True)
            lo = self._bucket_starts[buckets]
            pos = torch.minimum(torch.maximum(pos, lo), lo + self._bucket_counts[buckets] - 1)
            return self._bucket_members[pos].numpy()
        within = (u * self._bucket_counts[buckets]).long()
        return self._bucket_members[self._bucket_starts[buckets] + within].numpy()

    def next_global_indices(self) -> np.ndarray:
        if self.topic_probs is None:
            indices = self._shuffled_indices(self.global_batch)
        else:
            indices = self._topic_indices(self.global_batch)
        self._count(indices)
        return indices

    def next_batch(self) -> Batch:
        indices = self.next_global_indices()
        mine = indices[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return Batch(**self.ds.gather(mine))

    def __iter__(self):
        while True:
            yield self.next_batch()

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "generator": self.generator.get_state(),
                "topic_probs": None if self.topic_probs is None else self.topic_probs.clone(),
                "global_batch": self.global_batch, "data_hash": self.ds.data_hash,
                "packing": self.ds.packing, "topic_tokens": torch.from_numpy(self.topic_tokens.copy())}

    def load_state_dict(self, state: dict) -> None:
        if state.get("packing", "none") != self.ds.packing:
            raise ValueError(f"loader state was saved with packing={state.get('packing', 'none')}, this "
                             f"run reads packing={self.ds.packing}; resume with the same packing")
        if state["data_hash"] != self.ds.data_hash:
            raise ValueError("loader state was saved on different data (data hash differs)")
        if state["global_batch"] != self.global_batch:
            raise ValueError(f"loader state has global batch {state['global_batch']}, this run "
                             f"{self.global_batch}; resume with the same batch size x world size")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self.generator.set_state(state["generator"])
        self.topic_probs = state["topic_probs"]
        self._perm = None
        if "topic_tokens" in state:  # absent in states written before epoch accounting
            self.topic_tokens = state["topic_tokens"].double().numpy().copy()
