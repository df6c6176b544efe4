"""Are the tokens dirs written by this checkout the ones an older commit writes, for both engines?

Builds two small corpora (one shard per domain; several shards per domain with an empty document),
runs ``toremi prepare`` with the source tree of ``--ref`` (``git archive``) and with this checkout,
each on the local engine and on a local Ray, and compares the outputs file by file
(``diff_tokens`` in tests/annotate/test_ray_engine.py: bytes everywhere, except the zip timestamps of the
``.npz`` files and what depends on them or on the run, the paths and the clock). Exits 1 on any
difference. Not a timing benchmark: a few minutes on two busy cores.

Against 9b4f8da (before the one streamed merge) every file is the same on the local engine; on
Ray, ``documents.parquet`` holds the same rows in pyarrow's row groups instead of one per shard,
so that both engines now write the same bytes.

Usage: python bench/prepare_identity.py --ref 9b4f8da [--work DIR] [--engines local ray]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

CONFIGS = {  # corpus, overrides
    "label-docs": ("bbc", ["tokenizer=bpe:512", "seq_len=64", "topics_from=label", "bpe_train_mb=0.2",
                           "dev_sequences_per_domain=5"]),
    "domain-none": ("multi", ["tokenizer=bpe:512", "seq_len=32", "topics_from=domain", "bpe_train_mb=0.2",
                              "packing=none", "dev_fraction=0.2", "dev_sequences_per_domain=3"]),
    "label-multi": ("multi", ["tokenizer=bpe:300", "seq_len=48", "topics_from=label", "bpe_train_mb=0.2"]),
}
RUN = ("import sys; from toremi.config import load_config; from toremi.prepare import PrepareConfig, prepare;"
       "prepare(load_config(PrepareConfig, None, sys.argv[1:]))")


def corpora(work: Path) -> dict[str, Path]:
    from conftest import write_bbc_corpus
    from toremi.annotate.corpora import bbc_records, write_corpus

    out = {"bbc": work / "corpus-bbc", "multi": work / "corpus-multi"}
    if not out["bbc"].exists():
        write_bbc_corpus(out["bbc"], train_per_topic=12, eval_per_topic=6)
    if not out["multi"].exists():
        recs = bbc_records(8) + [{"id": "blank", "text": "", "domain": "misc", "label": None, "source": "z"}]
        write_corpus(out["multi"], recs, shard_rows=15)
    return out


def run(src: Path, corpus: Path, out: Path, over: list[str], engine: str, cache: Path) -> None:
    if (out / "manifest.json").exists():
        return
    env = {**os.environ, "PYTHONPATH": str(src), "TOREMI_HASH_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    args = [f"corpus={corpus}", f"out={out}", *over] + (["engine.name=ray", "engine.num_cpus=2"] if engine == "ray" else [])
    subprocess.run([sys.executable, "-c", RUN, *args], env=env, check=True, stdout=subprocess.DEVNULL)


def same_rows(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    return pq.read_table(a / "documents.parquet").equals(pq.read_table(b / "documents.parquet"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", default="9b4f8da")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--engines", nargs="+", default=["local", "ray"])
    args = ap.parse_args()
    from test_annotate_ray import diff_tokens

    work = args.work or Path(tempfile.mkdtemp(prefix="prepare-identity-"))
    ref_src = work / f"src-{args.ref}"
    if not ref_src.exists():
        ref_src.mkdir(parents=True)
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", args.ref, "src"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "--strip-components=1", "-C", str(ref_src)], input=tar, check=True)
    srcs = {"ref": ref_src, "this": ROOT / "src"}
    data = corpora(work)
    bad = 0
    for name, (corpus, over) in CONFIGS.items():
        for engine in args.engines:
            outs = {}
            for who, src in srcs.items():
                outs[who] = work / f"{who}-{engine}-{name}"
                run(src, data[corpus], outs[who], over, engine, work / f"sha-{who}.sqlite")
            diffs = diff_tokens(outs["ref"], outs["this"])
            if "differs: documents.parquet" in diffs and same_rows(outs["ref"], outs["this"]):
                diffs[diffs.index("differs: documents.parquet")] += " (the same rows in other row groups)"
            bad += bool(diffs)
            print(f"{name:12} {engine:6} {args.ref} vs this checkout: "
                  + ("identical" if not diffs else f"{len(diffs)} differences: {diffs[:5]}"))
        if len(args.engines) == 2:
            diffs = diff_tokens(work / f"this-local-{name}", work / f"this-ray-{name}")
            bad += bool(diffs)
            print(f"{name:12} local vs ray (this checkout): " + ("identical" if not diffs else f"{diffs[:5]}"))
    print(f"work dir: {work}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
