"""LLM labeller against a real, misbehaving OpenAI-compatible server on loopback."""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from toremi.annotate.label import Labeller, TopicSet
from toremi.annotate.llm import LLMConfig, LLMError, LLMLabeller, parse_answer

SECRET = "sk-test-do-not-leak-123"


class FakeLLM:
    """Answers by the first keyword of the prompt: each keyword is one kind of misbehaviour."""

    def __init__(self):
        self.calls = collections.Counter()
        self.auth = set()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                fake.headers = dict(self.headers)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                kind = prompt.split("corpus:\n", 1)[1].split(",")[0].strip()
                with fake.lock:
                    fake.calls[kind] += 1
                    n = fake.calls[kind]
                    fake.auth.add(self.headers.get("Authorization"))
                if kind == "always500" or (kind == "flaky" and n <= 2):
                    return self.reply(500, b"oops")
                if kind == "hang" and n == 1:
                    time.sleep(1.5)  # past the client's timeout
                answers = {"good": "Labels: Sports", "flaky": "Labels: Technology, Internet",
                           "hang": "labels: religion", "outside": "Labels: Cooking, Sports",
                           "format": "I believe this is about sports.", "toomany":
                           "Labels: Sports, Law, Time, Life"}
                if kind == "denied":
                    return self.reply(401, b"bad key")
                if kind == "notjson":
                    return self.reply(200, b"<html>gateway</html>")
                content = answers.get(kind, "Labels: Society")
                msg = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                self.reply(200, json.dumps(msg).encode())

            def reply(self, code, data):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): that is the point

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Fallback(Labeller):
    """A stand-in fallback that records what it was asked (the LLM labeller is under test)."""

    name = "similarity"

    def __init__(self):
        self.asked = []

    def label(self, clusters):
        self.asked += sorted(clusters)
        return {c: {"topic_ids": [0], "labels": ["Academic_disciplines"], "evidence": {"method": "similarity"}}
                for c in clusters}


@pytest.fixture
def server():
    s = FakeLLM()
    yield s
    s.server.shutdown()
    s.server.server_close()


KINDS = ["good", "flaky", "hang", "outside", "format", "always500", "notjson", "toomany", "denied"]


def test_retries_timeouts_validation_cache_and_fallback(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TOREMI_TEST_KEY", SECRET)
    topics = TopicSet.load()
    cfg = LLMConfig(base_url=server.url, model="m", api_key_env="TOREMI_TEST_KEY", timeout=0.5,
                    retries=2, backoff=0.01, concurrency=4)
    clusters = {i: {"keywords": [k, "word", "other"], "centroid": None, "size": 3} for i, k in enumerate(KINDS)}
    clusters[len(KINDS)] = {"keywords": [], "centroid": None, "size": 0}  # empty cluster
    fb = Fallback()
    lab = LLMLabeller(topics, cfg, fb, tmp_path / "cache.jsonl")
    out = lab.label(clusters)
    assert sorted(out) == sorted(clusters)  # nobody silently unlabelled
    by = {KINDS[i]: out[i] for i in range(len(KINDS))}
    assert by["good"]["labels"] == ["Sports"] and by["good"]["evidence"]["attempts"] == 1
    assert by["flaky"]["labels"] == ["Technology", "Internet"] and by["flaky"]["evidence"]["attempts"] == 3
    assert by["hang"]["labels"] == ["Religion"] and "Timeout" in by["hang"]["evidence"]["errors"][0]
    for kind, why in [("outside", "outside the topic set"), ("format", "wrong format"),
                      ("always500", "HTTP 500"), ("notjson", "not JSON"), ("toomany", "1-3 labels")]:
        ev = by[kind]["evidence"]
        assert why in ev["fallback_reason"] and ev["method"].startswith("similarity (fallback"), (kind, ev)
        assert server.calls[kind] == 3  # first attempt + 2 retries
    assert "HTTP 401" in by["denied"]["evidence"]["fallback_reason"] and server.calls["denied"] == 1
    assert out[len(KINDS)]["evidence"]["fallback_reason"].startswith("no keywords")
    assert sorted(fb.asked) == sorted([KINDS.index(k) for k in
                                       ("outside", "format", "always500", "notjson", "toomany", "denied")] + [len(KINDS)])
    assert server.auth == {f"Bearer {SECRET}"}
    first = dict(server.calls)

    # rerun: valid answers come from the cache (no request); failures are asked again
    lab2 = LLMLabeller(topics, cfg, Fallback(), tmp_path / "cache.jsonl")
    out2 = lab2.label(clusters)
    for kind in ("good", "flaky", "hang"):
        assert server.calls[kind] == first[kind] and out2[KINDS.index(kind)]["evidence"]["cached"]
        assert out2[KINDS.index(kind)]["labels"] == by[kind]["labels"]
    assert lab2.cache.hits == 3 and lab2.requests == 5 * 3 + 1
    cache_text = (tmp_path / "cache.jsonl").read_text()
    assert SECRET not in cache_text and SECRET not in json.dumps(out, default=str)


def test_unreachable_server_falls_back(tmp_path):
    # a closed port: connection refused is retried; it ends in the fallback with the reason
    cfg = LLMConfig(base_url="http://127.0.0.1:9/v1", timeout=0.5, retries=1, backoff=0.01, api_key_env="")
    out = LLMLabeller(TopicSet.load(), cfg, Fallback(), tmp_path / "c.jsonl").label(
        {0: {"keywords": ["a"], "centroid": None, "size": 1}})
    assert "2 failed attempt(s)" in out[0]["evidence"]["fallback_reason"]


def test_parse_answer_is_strict():
    names = TopicSet.load().names
    assert parse_answer("Labels: Food and drink, mass_media", names) == [
        names.index("Food_and_drink"), names.index("Mass_media")]
    assert parse_answer("Sure!\nLabels: **Sports**.", names) == [names.index("Sports")]
    for bad in ("Sports", "Labels: Sportz", "Labels: ", "Labels: Sports, Law, Time, Life"):
        with pytest.raises(LLMError):
            parse_answer(bad, names)


def test_pipeline_with_llm_labeller_reruns_from_cache(server, tmp_path):
    from toremi.annotate.corpora import bbc_records, write_corpus
    from toremi.annotate.pipeline import AnnotateConfig, Annotator
    from toremi.config import load_config

    corpus = write_corpus(tmp_path / "c", bbc_records(4), shard_rows=10)
    over = ["cluster.k=3", "progress=false", "label.labeller=llm", f"label.llm.base_url={server.url}",
            "label.llm.backoff=0.01"]
    ann = Annotator(corpus, tmp_path / "ann", load_config(AnnotateConfig, None, over))
    ann.run()
    doc = json.loads((tmp_path / "ann" / "topics.json").read_text())
    assert doc["labeller"] == "llm:default" and doc["llm"] == {"requests": 3, "cache_hits": 0, "fallbacks": 0}
    assert all(r["labels"] == ["Society"] for r in doc["clusters"].values())
    assert doc["summary"]["Society"] == 20
    ann.label()
    doc = json.loads((tmp_path / "ann" / "topics.json").read_text())
    assert doc["llm"] == {"requests": 0, "cache_hits": 3, "fallbacks": 0}


def test_no_key_sends_no_authorization_and_ignores_client_env(server, tmp_path, monkeypatch):
    # api_key_env="" means no key at all: the openai client's own OPENAI_API_KEY default is not used
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # the configured base_url wins
    monkeypatch.setenv("OPENAI_ORG_ID", "org-not-configured")
    cfg = LLMConfig(base_url=server.url, api_key_env="", timeout=2.0, retries=0)
    out = LLMLabeller(TopicSet.load(), cfg, Fallback(), tmp_path / "c.jsonl").label(
        {0: {"keywords": ["good", "x"], "centroid": None, "size": 1}})
    assert out[0]["labels"] == ["Sports"] and server.auth == {None}
    assert not any(k.lower().startswith("openai-") for k in server.headers)
    # a named variable that is unset: also no header
    cfg = LLMConfig(base_url=server.url, api_key_env="TOREMI_TEST_UNSET_KEY", timeout=2.0, retries=0)
    monkeypatch.delenv("TOREMI_TEST_UNSET_KEY", raising=False)
    LLMLabeller(TopicSet.load(), cfg, Fallback(), tmp_path / "c2.jsonl").label(
        {0: {"keywords": ["flaky", "x"], "centroid": None, "size": 1}})
    assert server.auth == {None}


def test_missing_openai_package_is_one_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openai", None)  # import openai -> ImportError
    lab = LLMLabeller(TopicSet.load(), LLMConfig(api_key_env=""), Fallback(), tmp_path / "c.jsonl")
    with pytest.raises(RuntimeError, match=r"toremi\[llm\]"):
        lab.label({0: {"keywords": ["a"], "centroid": None, "size": 1}})
