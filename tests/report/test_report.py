"""Report from logs written by a small simulation that drives the real method objects, rendered
in headless Chromium to check that the page loads without errors and every figure decodes."""

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from toremi.methods import MethodConfig, build_method
from toremi.report import main as report_main
from toremi.report import mean_ci, steps_to_reach, summarize
from toremi.runs import load_run

TOPICS = ["Business", "Sports", "Technology", "Politics"]
NOISY = 2


def simulate(run_dir: Path, method: MethodConfig, seed: int, tokens_dir: Path, steps: int = 240):
    """Topics learn faster the more weight they get; Technology is noise: its loss never falls.
    The method object sees the per-topic statistics exactly as the trainer would hand them over."""
    K = len(TOPICS)
    m = build_method(method, K, steps)
    rng = np.random.default_rng(seed)
    floor = np.array([2.0, 2.5, 5.5, 3.0])
    exposure = np.zeros(K)
    run_dir.mkdir(parents=True)
    metrics, weights = [], []
    loss_sum, count = np.zeros(K), np.zeros(K)
    for step in range(1, steps + 1):
        w = m.topic_weights.numpy()
        exposure += w
        loss = floor + 3.0 * np.exp(-exposure / 80.0)
        loss[NOISY] = floor[NOISY] + 0.05 * rng.standard_normal()
        n = rng.integers(5, 15, size=K).astype(float)
        loss_sum += (loss + 0.05 * rng.standard_normal(K)) * n
        count += n
        if step % method.interval == 0:
            weights.append(m.update(step, torch.tensor(loss_sum), torch.tensor(count)))
            loss_sum[:], count[:] = 0, 0
        if step % 10 == 0:
            metrics.append({"step": step, "tokens": step * 512, "loss": float(loss.mean()),
                            "lr": 1e-3, "tokens_per_s": 1000.0})
        if step % 40 == 0:
            metrics.append({"step": step, "tokens": step * 512,
                            "val_loss": float(np.delete(loss, NOISY).mean())})
    for name, recs in (("metrics.jsonl", metrics), ("weights.jsonl", weights)):
        (run_dir / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "tokens_dir": str(tokens_dir)}))
    (run_dir / "run.json").write_text(json.dumps({
        "method": method.name, "method_options": method.options(), "topic_names": TOPICS,
        "status": "done", "steps_done": steps, "tokens_dir": str(tokens_dir),
        "tokenizer": {"name": "bpe512"}, "model": {"size": "tiny"}, "data_hash": "sim",
        "total_steps": steps, "tokens_per_step": 512}))
    final = np.delete(loss, NOISY)
    (run_dir / "eval.json").write_text(json.dumps({
        "domains": {d: {"ppl": math.exp(final[i]), "bpb": final[i] / math.log(2) / 4}
                    for i, d in enumerate(["news", "legal", "code"])},
        "macro_ppl": float(np.exp(final).mean()),
        "downstream": {"piqa": {"acc": 0.5 + 0.01 * seed, "acc_norm": 0.5, "n": 100}}}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    tokens = root / "tokens"
    tokens.mkdir()
    (tokens / "manifest.json").write_text(json.dumps({"noise": {"topic": "Technology"}}))
    methods = {"uniform": MethodConfig(name="uniform", interval=20),
               "toremi-paper": MethodConfig(name="toremi", preset="paper", interval=20,
                                            switch_fraction=0.5)}
    dirs = []
    for label, cfg in methods.items():
        for seed in (1, 2, 3):
            simulate(root / f"{label}-s{seed}", cfg, seed, tokens)
            dirs.append(root / f"{label}-s{seed}")
    return root, dirs


def test_statistics():
    s = mean_ci([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["ci"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert mean_ci([5.0]) == {"mean": 5.0, "ci": None, "n": 1}
    run = {"metrics": [{"step": 10, "val_loss": 3.0}, {"step": 20, "loss": 1.0},
                       {"step": 30, "val_loss": 2.0}]}
    assert steps_to_reach(run, 2.5) == 30 and steps_to_reach(run, 1.0) is None


def test_summary_and_noise_behaviour(runs):
    _, dirs = runs
    loaded = [load_run(d) for d in dirs]
    assert {r["label"] for r in loaded} == {"uniform", "toremi-paper"}
    assert loaded[0]["noise"]["topic"] == "Technology"
    summ = summarize(loaded)
    tor = summ["methods"]["toremi-paper"]
    assert tor["domains"]["news"]["n"] == 3 and tor["domains"]["news"]["ci"] is not None
    assert summ["methods"]["uniform"]["steps_to_baseline"]["reached"] == 3
    # In stage 2 the never-learning noisy topic gets turned down below the others.
    w = loaded[3]["weights"][-1]
    assert w["stage"] == 2 and w["weights"][NOISY] < min(np.delete(w["weights"], NOISY))


def chromium() -> str | None:
    """The headless browser, if installed (`make chromium` installs it; `make test` depends on it)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_every_figure_decodes_fully(runs, tmp_path):
    """Every PNG, on disk and embedded in the page, decodes to the last pixel (a browser draws a
    truncated PNG without an error, so the Chromium check below cannot see one)."""
    import base64
    import io

    from PIL import Image

    _, dirs = runs
    out = tmp_path / "rep"
    assert report_main(["--runs", *map(str, dirs), "--out", str(out)]) == 0
    files = {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}
    page = (out / "report.html").read_text()
    embedded = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([^']+)'", page)
    assert len(files) == 6 and "forest.png" in files and sorted(n for n, _ in embedded) == sorted(files)
    for name, data in [*files.items(), *((f"{n} (embedded)", base64.b64decode(b)) for n, b in embedded)]:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                size = im.size
        except (OSError, SyntaxError) as exc:
            raise AssertionError(f"{name}: does not decode fully ({len(data)} bytes): {exc}") from None
        assert min(size) > 100, f"{name}: {size}"


PROBE = """<script>window.__errors=[];window.addEventListener('error',function(e){
window.__errors.push(String(e.message||(e.target&&e.target.src)||e))},true);
window.addEventListener('load',function(){var im=[].slice.call(document.images);
var p=document.createElement('pre');p.id='probe';p.textContent=JSON.stringify({n:im.length,
ok:im.filter(function(i){return i.complete&&i.naturalWidth>0}).length,
widths:im.map(function(i){return i.naturalWidth}),errors:window.__errors,
tables:document.querySelectorAll('table').length});document.body.appendChild(p)});</script>"""


def test_report_renders_in_chromium(runs, tmp_path):
    root, dirs = runs
    out = tmp_path / "rep"
    assert report_main(["--runs", *map(str, dirs), "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["domains.png", "forest.png", "loss.png", "noise.png", "topic_loss.png", "weights.png"]
    assert page.index("forest.png") < page.index("Per-domain perplexity")  # the page leads with it
    assert page.count("<img") == len(pngs) and "src='data:image/png;base64," in page
    assert "Technology" in page and "toremi-paper" in page and "±" in page
    md = (out / "report.md").read_text()
    assert "| toremi-paper | 3 |" in md
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed: run `make chromium`")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
         probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"probe missing from the DOM; stderr: {proc.stderr[-2000:]}"
    res = json.loads(m.group(1).replace("&quot;", '"'))
    assert res["errors"] == []
    assert res["n"] == len(pngs) and res["ok"] == len(pngs), res
    assert min(res["widths"]) > 200 and res["tables"] >= 4


def test_untrusted_names_are_escaped(runs, tmp_path):
    """Run names, method labels and topic names come from files anyone can write: the page shows
    them as text (Jinja2 autoescape), in the tables, the diagnosis table and the config dumps."""
    from toremi.report.html import bold_segments

    _, dirs = runs
    evil = "<img src=x onerror=alert(1)>"
    src = next(d for d in dirs if d.name.startswith("toremi-paper"))
    run = tmp_path / f"run{evil}"
    shutil.copytree(src, run)
    info = json.loads((run / "run.json").read_text())
    info.update(method="<script>alert(1)</script>", method_options={"name": "<script>x</script>"},
                topic_names=[f"<b>{t}</b>" for t in TOPICS])
    (run / "run.json").write_text(json.dumps(info))
    recs = [json.loads(x) for x in (run / "weights.jsonl").read_text().splitlines()]
    for r in recs:  # a noise-aware run's diagnosis fields: the per-topic table shows topic names
        r.update(diagnosis=["easy"] * len(TOPICS), level=[1.0] * len(TOPICS), slope=[0.0] * len(TOPICS))
    (run / "weights.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "rep"
    base = next(d for d in dirs if d.name.startswith("uniform"))
    assert report_main(["--runs", str(base), str(run), "--out", str(out), "--title", "<i>t</i>"]) == 0
    page = (out / "report.html").read_text()
    assert "<script" not in page and "<img src=x" not in page and "<b>Business" not in page
    assert "<i>" not in page and "&lt;i&gt;t&lt;/i&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the label, as text
    assert f"Topic diagnosis: run&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<td>&lt;b&gt;Business&lt;/b&gt;</td>" in page
    assert bold_segments("a **b** c **d") == [("a ", False), ("b", True), (" c **d", False)]


def test_per_topic_epochs_panel_and_table(tmp_path):
    """The committed cap grid (real run.json files with topic_epochs / topic_weighted_epochs): the
    report shows per-topic epochs per method as a figure and a table, values as recorded."""
    from PIL import Image

    grid = Path(__file__).resolve().parents[2] / "docs" / "results" / "cap_cpu"
    out = tmp_path / "rep"
    assert report_main(["--experiment", str(grid), "--out", str(out)]) == 0
    with Image.open(out / "epochs.png") as im:
        im.load()
        assert min(im.size) > 100
    md = (out / "report.md").read_text()
    table = md[md.index("### Per-topic epochs"):].split("\n\n")[1].splitlines()
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head[0] == "topic" and "toremi-sampling-cap1.5 (cap 1.5)" in head
    rows = {r.strip("|").split("|")[0].strip(): [c.strip() for c in r.strip("|").split("|")[1:]] for r in table[2:]}
    for label in ("uniform", "toremi-sampling-cap1.5"):
        info = json.loads((grid / "runs" / f"{label}-s1" / "run.json").read_text())
        col = [h.split(" (cap")[0] for h in head[1:]].index(label)
        for t, e in zip(info["topic_names"], info["topic_epochs"]):
            w = info.get("topic_weighted_epochs")
            expect = f"{e:.2f}" + (f" ({w[info['topic_names'].index(t)]:.2f})" if w else "")
            assert rows[t][col] == expect, (label, t)
        assert float(rows["max"][col]) == pytest.approx(max(info["topic_epochs"]), abs=0.005)
    cap = [h.split(" (cap")[0] for h in head[1:]].index("toremi-sampling-cap1.5")
    assert float(rows["max"][cap]) <= 1.5 + 0.01  # the cap holds: no topic past 1.5 epochs
    assert "Per-topic epochs" in (out / "report.html").read_text()
