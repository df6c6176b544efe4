"""Where toremi finds data that is not an input of a stage: raw sources, PIQA, the Brown corpus.

Replaces ``Path(__file__).parents[3]`` (the repository root), which points into site-packages
after a non-editable ``pip install .``. Order: an environment variable; the checkout this package
runs from (a ``pyproject.toml`` two levels above the package), so ``make sources`` keeps working;
then the current directory; else the user cache (``$XDG_CACHE_HOME/toremi``, default
``~/.cache/toremi``).
"""

from __future__ import annotations

import os
from pathlib import Path


def checkout() -> Path | None:
    """The source checkout this package is imported from (editable install), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() and (root / "src" / "toremi").is_dir() else None


def user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "toremi"


def bases() -> list[Path]:
    """Candidate roots, most specific first: the checkout, the current directory."""
    return [b for b in (checkout(), Path.cwd()) if b is not None]


def sources_dir() -> Path:
    """Raw text sources: ``$TOREMI_SOURCES``, ``<checkout or cwd>/.cache/sources`` if it exists,
    else the user cache."""
    if os.environ.get("TOREMI_SOURCES"):
        return Path(os.environ["TOREMI_SOURCES"])
    for base in bases():
        if (base / ".cache" / "sources").is_dir():
            return base / ".cache" / "sources"
    return user_cache() / "sources"


def piqa_dir() -> Path:
    """PIQA: ``$TOREMI_PIQA``, else ``../shared/data/piqa`` beside the checkout or the cwd."""
    if os.environ.get("TOREMI_PIQA"):
        return Path(os.environ["TOREMI_PIQA"])
    cands = [(b / ".." / "shared" / "data" / "piqa").resolve() for b in bases()]
    return next((c for c in cands if c.exists()), cands[0] if cands else user_cache() / "piqa")
