"""toremi.layout: data locations without the repository-root guess (works outside a checkout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def test_sources_dir_order(tmp_path, monkeypatch):
    from toremi import layout

    monkeypatch.setenv("TOREMI_SOURCES", str(tmp_path / "env"))
    assert layout.sources_dir() == tmp_path / "env"
    monkeypatch.delenv("TOREMI_SOURCES")
    monkeypatch.setattr(layout, "checkout", lambda: None)  # as after a non-editable install
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert layout.sources_dir() == tmp_path / "xdg" / "toremi" / "sources"
    (tmp_path / ".cache" / "sources").mkdir(parents=True)
    assert layout.sources_dir() == tmp_path / ".cache" / "sources"


def test_installed_copy_outside_a_checkout_uses_the_user_cache(tmp_path):
    """The package copied away from its checkout (like site-packages) never looks in it."""
    import shutil

    shutil.copytree(SRC / "toremi", tmp_path / "site" / "toremi")
    env = {k: v for k, v in os.environ.items() if k not in ("TOREMI_SOURCES", "PYTHONPATH")}
    env.update(PYTHONPATH=str(tmp_path / "site"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    code = "import toremi.layout as l, toremi.corpus.sources as s; print(l.checkout()); print(s.sources_root())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["None", str(tmp_path / "xdg" / "toremi" / "sources")]
