"""The `toremi` command as a user runs it: real subprocesses, real exit codes."""

import re
import subprocess
import sys

import pytest
from helpers import toremi_cli as toremi


def test_usage_and_unknown_stage():
    out = toremi()
    assert out.returncode == 0 and "prepare" in out.stdout and "demo" in out.stdout
    bad = toremi("trian")
    assert bad.returncode == 2 and "unknown stage 'trian'" in bad.stderr


def test_missing_input_is_one_clear_line(tmp_path):
    out = toremi("prepare", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "tok"))
    assert out.returncode == 2
    assert "no document shards; run `toremi corpus build` first" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_override_names_the_key(tiny_tokens, tmp_path):
    out = toremi("train", "--tokens", str(tiny_tokens), "--out", str(tmp_path / "run"), "method.nam=x")
    assert out.returncode == 2 and "method.nam" in out.stderr and "method.name" in out.stderr


def test_stdout_closed_early_exits_quietly():
    """`toremi ... | head -1`: the reader is gone before the output is written. Every kind of
    output (the dispatcher's, a stage's print, a stage's argparse help) ends without a traceback
    or an 'Exception ignored' line, with 141 (128 + SIGPIPE) or 0 (argparse ignores the error)."""
    stages = [name.split() for name in stage_objects()]
    for args in (["--help"], ["--version"], ["corpus", "--help"], ["corpus", "list"],
                 *[[*stage, "--help"] for stage in stages]):
        p = subprocess.Popen([sys.executable, "-m", "toremi", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        p.stdout.close()  # before the child can have written anything: the import alone takes longer
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) in (0, 141), (args, p.returncode, err)
        assert err == "", (args, err)


# --- one parser for every stage (toremi.stage) -------------------------------------------------
def stage_objects():
    """Every Stage a `toremi` subcommand runs, found through the dispatcher's list."""
    import importlib

    from toremi.cli import STAGES
    from toremi.stage import Stage

    found = {}
    for name, (module, _) in STAGES.items():
        mod = importlib.import_module(module)
        mine = {v.name: v for v in vars(mod).values() if isinstance(v, Stage)}
        assert mine, f"toremi {name} ({module}) builds its command line without toremi.stage.Stage"
        found.update(mine)
    return found


def dotted_keys(cls, prefix=""):
    """Every key of a config dataclass, walked here independently of toremi.stage."""
    import dataclasses
    import types
    import typing

    from toremi.methods import REGISTRY, MethodConfig

    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        nested = [a for a in args if dataclasses.is_dataclass(a)]
        items = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)] \
            if typing.get_origin(tp) is list else []
        if cls is MethodConfig and f.name == "opts":  # the chosen method's options: every method's
            for name, info in REGISTRY.items():
                if info.options:
                    keys += dotted_keys(info.options, f"{prefix}{name}.")
            continue
        if not nested or len(args) > len(nested) + (type(None) in args):
            keys.append(prefix + f.name)
        for n in nested:
            keys += dotted_keys(n, f"{prefix}{f.name}.")
        for item in items:
            keys += dotted_keys(item, f"{prefix}{f.name}[].")
    return keys


def test_every_stage_help_lists_every_key(capsys):
    """`toremi <stage> --help` names every field of the stage's dataclass (nested ones dotted),
    with its type and default; a stage added to toremi.cli.STAGES is checked without a test edit."""
    from toremi.cli import main

    stages = stage_objects()
    assert {"corpus build", "corpus ingest", "annotate", "prepare", "train", "eval", "experiment", "remap",
            "noise", "report", "demo", "transfer"} <= set(stages)
    for name, stage in stages.items():
        assert main([*name.split(), "--help"]) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"usage: toremi {name}"), name
        keys = dotted_keys(stage.config)
        assert len(keys) >= 3, name
        missing = [k for k in keys if not re.search(rf"--{re.escape(k.replace('_', '-'))}[ ,\n]", text)
                   and f"  {k}=VALUE" not in text and f"  {k}\n" not in text]
        assert missing == [], (name, missing)
        assert "--config FILE.yaml" in text
    out = stages["train"].parser().format_help()
    assert "--optim.min-lr-ratio FLOAT" in out and "[float, default 0.1] final lr = lr * min_lr_ratio" in out
    assert "--method.toremi.alpha FLOAT" in out and "additive step size" in out  # a method's own option
    assert "--tokens PATH" in out and "  tokens=VALUE\n      [int, default 0] token budget" in out


def test_report_takes_config_as_a_command(tmp_path):
    """`toremi report --config FILE` (any option as a YAML key) and its one-line refusal."""
    import pathlib

    grid = pathlib.Path(__file__).resolve().parents[1] / "docs" / "results" / "noise_quality"
    (tmp_path / "r.yaml").write_text(f"recompute: {grid}\nexclude: [news]\ncheck: true\n")
    ok = toremi("report", "--config", str(tmp_path / "r.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "matches the committed results" in ok.stdout
    assert not (grid / ".toremi.lock").exists()  # --check writes nothing, so it locks nothing
    (tmp_path / "bad.yaml").write_text("recompte: x\n")
    bad = toremi("report", "--config", str(tmp_path / "bad.yaml"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("toremi report: config error: unknown config key(s) ['recompte']")


def test_flags_lists_and_overrides_meet_in_one_place(tmp_path):
    from toremi.config import ConfigError
    from toremi.report.cli import STAGE as REPORT
    from toremi.train.cli import STAGE as TRAIN

    cfg = REPORT.parse(["--runs", "a", "b", "title=t", "--out", "o"])  # a list option's tail k=v
    assert (cfg.runs, cfg.title, cfg.out) == (["a", "b"], "t", "o")
    cfg = REPORT.parse(["--recompute", "g", "--exclude", "news,legal", "--check"])
    assert cfg.exclude == ["news", "legal"] and cfg.check is True
    cfg = TRAIN.parse(["--tokens", "T", "--no-progress", "--optim.lr", "3e-4", "method=toremi",
                       "--method.toremi.alpha", "0.5", "--model.attention", "doc"])
    assert (str(cfg.tokens_dir), cfg.progress, cfg.optim.lr, cfg.method.opts.alpha, cfg.model.attention) == \
        ("T", False, 3e-4, 0.5, "doc")
    with pytest.raises(ConfigError, match=r"optim.lr is given twice, as --optim.lr 1 and as optim.lr=2"):
        TRAIN.parse(["--optim.lr", "1", "optim.lr=2"])
    with pytest.raises(ConfigError, match=r"give one of --runs"):
        REPORT.parse(["--out", "o"])


def test_a_new_option_is_one_dataclass_field(tmp_path, capsys):
    """Adding a stage option = adding a field (with its comment) and using it: the flag, the
    key=value form, the YAML key and the --help line come from the field."""
    import dataclasses

    from toremi.stage import Stage

    @dataclasses.dataclass
    class Cfg:
        out: str = "o"  # where it goes
        shiny: int = 3  # a brand-new option

    seen = []
    stage = Stage("x", Cfg, lock=lambda cfg: tmp_path / cfg.out)
    assert stage.run(["--shiny", "5"], lambda cfg: seen.append(cfg.shiny)) == 0
    (tmp_path / "c.yaml").write_text("shiny: 7\n")
    stage.run(["--config", str(tmp_path / "c.yaml")], lambda cfg: seen.append(cfg.shiny))
    stage.run(["shiny=9"], lambda cfg: seen.append(cfg.shiny))
    assert seen == [5, 7, 9]
    assert "--shiny INT" in stage.parser().format_help()
    assert "[int, default 3] a brand-new option" in stage.parser().format_help()


HOLD = ("import sys, time\nfrom toremi.integrity import hold_lock\n"
        "lock = hold_lock(sys.argv[1], 'holder')\nprint('locked', flush=True)\ntime.sleep(600)\n")


def test_a_second_writer_of_any_stage_is_refused(tmp_path):
    """A real process holds a real lock on D; every writing stage pointed at D exits 2 naming
    the holder, before it writes anything (eval, noise, experiment, report included)."""
    import yaml

    d, src = tmp_path / "d", tmp_path / "src"
    for p in (d, src, src / "run"):
        p.mkdir(parents=True)
    (src / "in.jsonl").write_text('{"text": "x"}\n')
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"out": str(d), "tokens": str(src), "seeds": [1],
                                   "methods": [{"name": "uniform", "train": {"method.name": "uniform"}}]}))
    scales = tmp_path / "transfer.yaml"
    scales.write_text(yaml.safe_dump({"out": str(d), "scales": [{"name": "a", "dir": str(src)},
                                                                {"name": "b", "dir": str(src)}]}))
    commands = {
        "corpus build": ["corpus", "build", "--out", d, "--domains", "news"],
        "corpus ingest": ["corpus", "ingest", "--input", src / "in.jsonl", "--out", d],
        "annotate": ["annotate", "--corpus", src, "--out", d],
        "prepare": ["prepare", "--corpus", src, "--out", d],
        "train": ["train", "--tokens", src, "--out", d, "steps=1"],
        "eval": ["eval", "--run", d],
        "experiment": ["experiment", "--config", exp],
        "remap": ["remap", "--old", src, "--new", src, "--run", src / "run", "--out", d / "remap.json"],
        "noise": ["noise", "--corpus", src, "--out", d],
        "report": ["report", "--runs", src / "run", "--out", d],
        "demo": ["demo", f"out={d}"],
        "transfer": ["transfer", "--config", scales],
    }
    assert set(commands) == set(stage_objects())  # a new stage must be added here
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for name, args in commands.items():
            out = toremi(*map(str, args))
            assert out.returncode == 2, (name, out.stdout[-500:], out.stderr[-1500:])
            assert f"{d} is being written by `toremi holder` (PID {holder.pid}" in out.stderr, (name, out.stderr)
        assert sorted(p.name for p in d.iterdir()) == [".toremi.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_in_a_process_and_released_after(tmp_path):
    """A stage entry and the library function it calls both lock the dir: one hold, released
    when the outer one ends (an error included), after which another process may lock it."""
    from toremi.integrity import DirLock, LockHeld

    d = tmp_path / "d"
    with DirLock(d, "outer"):
        with DirLock(d, "inner"):
            pass
        probe = subprocess.run([sys.executable, "-c", "import sys; from toremi.integrity import hold_lock; "
                                "hold_lock(sys.argv[1], 'other')", str(d)], capture_output=True, text=True)
        assert probe.returncode != 0 and "LockHeld" in probe.stderr  # still held by the outer one
    with pytest.raises(RuntimeError):
        with DirLock(d, "x"):
            raise RuntimeError("boom")
    probe = subprocess.run([sys.executable, "-c", "import sys; from toremi.integrity import hold_lock; "
                            "hold_lock(sys.argv[1], 'other')", str(d)], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert issubclass(LockHeld, RuntimeError)


def test_a_refused_stage_leaves_no_output_dir(tmp_path):
    """The entry's lock makes the output dir; a stage that refuses (exit 2 or an error) before
    writing anything removes it again, so a typo does not leave empty dirs behind."""
    import dataclasses

    from toremi.stage import Stage

    @dataclasses.dataclass
    class Cfg:
        out: str = "o"

    stage = Stage("x", Cfg, lock=lambda cfg: tmp_path / cfg.out)
    assert stage.run([], lambda cfg: 2) == 2 and not (tmp_path / "o").exists()
    with pytest.raises(ValueError):
        stage.run([], lambda cfg: (_ for _ in ()).throw(ValueError("refused")))
    assert not (tmp_path / "o").exists()
    assert stage.run([], lambda cfg: (tmp_path / "o" / "x").write_text("1") and 2) == 2
    assert (tmp_path / "o" / "x").exists()  # something was written: kept
    assert stage.run(["out=p"], lambda cfg: 0) == 0 and (tmp_path / "p").is_dir()
