"""LLM labeller: any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, llama.cpp server,
ollama, SGLang, hosted APIs) picks 1-3 topics per cluster from the cluster's first 50 keywords,
as in the ToReMi authors' pipeline (they used llama3-70b).

The HTTP side is the maintained ``openai`` client (extra ``llm``: ``pip install 'toremi[llm]'``),
one client shared by the worker threads, with its own retries off: an attempt is one request, and
this module decides what is retried, because an answer outside the topic set or in the wrong format
is as much a failed attempt as an HTTP 500 and the evidence records every attempt's reason.

Robustness, because a labelling run makes thousands of calls: answers are validated strictly
against the topic set (anything else is a failed attempt), failed attempts (429, 5xx, timeouts,
refused or reset connections, non-JSON bodies, invalid answers) are retried with exponential
backoff plus jitter, other 4xx (a bad key, a wrong model) are not; every request has a timeout;
calls run concurrently in a bounded thread pool, and valid answers go to a persistent cache keyed
by sha256(model + prompt), so a rerun costs nothing. A cluster whose attempts all fail is labelled
by the fallback (similarity) labeller and its evidence records why. The API key is read from the
environment variable named by ``api_key_env`` (no other variable: the client's own
``OPENAI_API_KEY``/``OPENAI_BASE_URL``/``OPENAI_ORG_ID``/``OPENAI_PROJECT_ID`` defaults are
overridden), sent only as the bearer header (none at all when the variable is empty or unset), and
never logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from toremi.annotate.label import Labeller, TopicSet

PROMPT = (
    "The following keywords describe a cluster of documents from a text corpus:\n"
    "{keywords}\n\n"
    "Choose between 1 and 3 topic labels that best describe these documents. Use only labels from "
    "this list, spelled exactly as listed:\n{labels}\n\n"
    "Answer with one line in exactly this format and nothing else:\n"
    "Labels: <label>, <label>, <label>"
)


@dataclasses.dataclass
class LLMConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"
    api_key_env: str = "OPENAI_API_KEY"   # name of the env var holding the key ("" = no key)
    n_keywords: int = 50
    temperature: float = 0.0
    max_tokens: int = 64
    timeout: float = 60.0                 # seconds per request
    retries: int = 4                      # attempts after the first
    backoff: float = 1.0                  # seconds; doubles per retry (plus jitter), capped
    max_backoff: float = 30.0
    concurrency: int = 8
    cache: str = ""                       # jsonl path ("" = <annotation dir>/llm_cache.jsonl)

    def __post_init__(self):
        if self.retries < 0 or self.concurrency < 1 or self.timeout <= 0 or self.n_keywords < 1:
            raise ValueError("label.llm: retries >= 0, concurrency >= 1, timeout > 0, n_keywords >= 1")


class LLMError(Exception):
    """One failed attempt; ``retry`` says whether another attempt may succeed."""

    def __init__(self, reason: str, retry: bool = True):
        super().__init__(reason)
        self.reason, self.retry = reason, retry


def _norm(s: str) -> str:
    return re.sub(r"[\s_]+", "_", s.strip().strip("'\"`*.[]()").strip()).lower()


def parse_answer(text: str, names: list[str]) -> list[int]:
    """Strictly parse ``Labels: a, b`` into topic ids; raise LLMError on anything else."""
    m = re.search(r"labels?\s*:\s*(.+)", text, flags=re.IGNORECASE)
    if not m:
        raise LLMError(f"wrong format (no 'Labels:' line): {text[:120]!r}")
    index = {_norm(n): i for i, n in enumerate(names)}
    items = [x for x in re.split(r"[,;]", m.group(1).splitlines()[0]) if x.strip()]
    unknown = [x.strip() for x in items if _norm(x) not in index]
    if unknown:
        raise LLMError(f"label(s) outside the topic set: {unknown[:3]}")
    ids = list(dict.fromkeys(index[_norm(x)] for x in items))
    if not 1 <= len(ids) <= 3:
        raise LLMError(f"expected 1-3 labels, got {len(ids)}")
    return ids


class ResponseCache:
    """Append-only jsonl of valid answers, keyed by sha256(model + prompt); thread-safe."""

    def __init__(self, path: Path):
        self.path, self.lock, self.data = Path(path), threading.Lock(), {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self.data[rec["key"]] = rec["response"]
                except (ValueError, KeyError):
                    continue  # a torn last line from an interrupted run
        self.hits = 0

    @staticmethod
    def key(model: str, prompt: str) -> str:
        return hashlib.sha256(f"{model}\n{prompt}".encode()).hexdigest()

    def get(self, key: str) -> str | None:
        with self.lock:
            hit = self.data.get(key)
            self.hits += hit is not None
            return hit

    def put(self, key: str, response: str) -> None:
        with self.lock:
            self.data[key] = response
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps({"key": key, "response": response}) + "\n")


class LLMLabeller(Labeller):
    def __init__(self, topics: TopicSet, cfg: LLMConfig, fallback: Labeller, cache_path: Path):
        self.topics, self.cfg, self.fallback = topics, cfg, fallback
        self.cache = ResponseCache(Path(cfg.cache) if cfg.cache else cache_path)
        self.name = f"llm:{cfg.model}"
        self.requests = 0
        self._lock = threading.Lock()
        self._openai, self._headers = None, {}

    def prompt(self, keywords: list[str]) -> str:
        return PROMPT.format(keywords=", ".join(keywords[:self.cfg.n_keywords]),
                             labels="\n".join(self.topics.names))

    def _client(self):
        """The shared ``openai.OpenAI`` client (thread-safe), built on first use."""
        with self._lock:
            if self._openai is None:
                try:
                    import openai
                except ImportError:
                    raise RuntimeError("label.labeller=llm needs the openai package: "
                                       "pip install 'toremi[llm]'") from None
                key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
                # no key: a placeholder satisfies the client and the header is omitted per request
                self._openai = openai.OpenAI(base_url=self.cfg.base_url, api_key=key or "unused",
                                             timeout=self.cfg.timeout, max_retries=0)
                try:
                    from openai import Omit
                except ImportError:  # exported only by newer releases
                    from openai._types import Omit
                # nothing the config does not name: no organization/project from the client's env
                self._headers = {"OpenAI-Organization": Omit(), "OpenAI-Project": Omit(),
                                 **({} if key else {"Authorization": Omit()})}
            return self._openai

    def close(self) -> None:
        with self._lock:
            client, self._openai = self._openai, None
        if client is not None:
            client.close()

    def _post(self, prompt: str) -> str:
        """One request (one attempt): the answer's text, or LLMError saying whether to retry."""
        import openai

        client = self._client()
        with self._lock:
            self.requests += 1
        try:
            resp = client.chat.completions.create(
                model=self.cfg.model, temperature=self.cfg.temperature, max_tokens=self.cfg.max_tokens,
                messages=[{"role": "user", "content": prompt}], extra_headers=self._headers)
        except openai.APIStatusError as exc:
            code = exc.status_code
            raise LLMError(f"HTTP {code}", retry=code == 429 or code >= 500) from None
        except openai.APIConnectionError as exc:  # timeouts (APITimeoutError), refused, reset
            cause = exc.__cause__
            detail = f" ({type(cause).__name__}: {cause})" if cause is not None and str(cause) else ""
            raise LLMError(f"{type(exc).__name__}: {exc}{detail}") from None
        except (ValueError, openai.APIResponseValidationError):  # JSONDecodeError is a ValueError
            raise LLMError("response is not JSON") from None
        try:
            return resp.choices[0].message.content or ""
        except (AttributeError, IndexError, KeyError, TypeError):
            raise LLMError("response lacks choices[0].message.content") from None

    def ask(self, keywords: list[str]) -> tuple[list[int], dict]:
        """Topic ids for one cluster, or LLMError after the last attempt."""
        prompt = self.prompt(keywords)
        key = ResponseCache.key(self.cfg.model, prompt)
        cached = self.cache.get(key)
        if cached is not None:
            return parse_answer(cached, self.topics.names), {"cached": True, "answer": cached}
        errors = []
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                delay = min(self.cfg.max_backoff, self.cfg.backoff * 2 ** (attempt - 1))
                time.sleep(delay * (0.5 + random.random() / 2))
            try:
                answer = self._post(prompt)
                ids = parse_answer(answer, self.topics.names)
            except LLMError as exc:
                errors.append(exc.reason)
                if not exc.retry:
                    break
                continue
            self.cache.put(key, answer)
            return ids, {"cached": False, "answer": answer, "attempts": attempt + 1, "errors": errors}
        raise LLMError(f"{len(errors)} failed attempt(s); last: {errors[-1]}; all: {errors}", retry=False)

    def label(self, clusters: dict[int, dict]) -> dict[int, dict]:
        cids = sorted(clusters)

        def one(cid):
            kws = clusters[cid].get("keywords", [])
            if not kws:
                return cid, None, "no keywords (empty cluster)"
            try:
                return cid, self.ask(kws), None
            except LLMError as exc:
                return cid, None, exc.reason

        if any(clusters[c].get("keywords") for c in cids):
            self._client()  # a missing package or a bad base_url fails here, once, not per cluster
        try:
            with ThreadPoolExecutor(self.cfg.concurrency) as pool:
                results = list(pool.map(one, cids))
        finally:
            self.close()
        out, failed = {}, {}
        for cid, res, reason in results:
            if res is None:
                failed[cid] = reason
                continue
            ids, ev = res
            out[cid] = {"topic_ids": ids, "labels": [self.topics.names[i] for i in ids],
                        "evidence": {"method": self.name, **ev, "keywords": clusters[cid].get("keywords", [])[:10]}}
        if failed:
            fb = self.fallback.label({c: clusters[c] for c in failed})
            for cid, rec in fb.items():
                rec["evidence"]["fallback_reason"] = failed[cid]
                rec["evidence"]["method"] = f"{self.fallback.name} (fallback from {self.name})"
                out[cid] = rec
        return out
