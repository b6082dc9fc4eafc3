"""The README's speed and accuracy numbers against the benchmark outputs kept in benchmarks/.

The project's rule: every such number comes from a script in benchmarks/ that anyone can rerun, with its
output kept beside it as a .txt file, and the README names that file. These checks read files only (and
build two models for their MAC counts): no benchmark is run.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mnistlab.models import build_model, count_macs

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
README = (ROOT / "README.md").read_text(encoding="utf-8")

# Backticked .py / .txt names in the README that are not benchmark files.
NOT_BENCHMARKS = {"constraints.txt", "cli.py", "config.py", "my_script.py"}
SCRIPTS = sorted(p.stem for p in BENCH.glob("*.py"))
OUTPUTS = sorted(BENCH.glob("*.txt"))


def _benchmark_names() -> set[str]:
    """The benchmark scripts and outputs the README names (with or without the benchmarks/ folder)."""
    names = set()
    for token in re.findall(r"`([^`\s]+\.(?:txt|py))`", README):
        if "/" in token.removeprefix("benchmarks/") or token.startswith(("test_", "_")) or token in NOT_BENCHMARKS:
            continue  # a path in src/ or tests/; `_epyc-avx2.txt` is a file-name ending the README explains
        names.add(token.removeprefix("benchmarks/"))
    return names


def test_every_benchmark_file_the_readme_names_exists():
    missing = sorted(name for name in _benchmark_names() if not (BENCH / name).is_file())
    assert not missing, f"README names benchmark files that are not in benchmarks/: {missing}"


def test_every_script_the_readme_names_has_a_kept_output_it_names_too():
    # A number is only checkable when the README says which output holds it, not just which script made it.
    named = _benchmark_names()
    scripts = sorted(n.removesuffix(".py") for n in named if n.endswith(".py"))
    assert scripts, "the README names no benchmark script"
    without = [s for s in scripts if not any(n == f"{s}.txt" or n.startswith(f"{s}_") and n.endswith(".txt")
                                              for n in named)]
    assert not without, f"the README names these scripts but none of their outputs: {without}"


@pytest.mark.parametrize("stem", SCRIPTS)
def test_every_benchmark_script_says_how_to_run_it(stem):
    doc = ast.get_docstring(ast.parse((BENCH / f"{stem}.py").read_text(encoding="utf-8"))) or ""
    assert f"benchmarks/{stem}.py" in doc, f"benchmarks/{stem}.py's docstring has no command line that runs it"


@pytest.mark.parametrize("output", OUTPUTS, ids=lambda p: p.name)
def test_every_kept_output_belongs_to_a_script_and_names_its_machine(output):
    assert any(output.stem == s or output.stem.startswith(f"{s}_") for s in SCRIPTS), \
        f"{output.name} is not named after a script in benchmarks/"
    if output.stem.endswith("_rule"):
        return  # a decision rule written before its runs, not an output
    head = "\n".join(output.read_text(encoding="utf-8").splitlines()[:3])
    assert "machine:" in head or "Xeon" in head or "EPYC" in head, f"{output.name} does not say what it ran on"


def _mean_line(name: str) -> tuple[str, str]:
    """(mean test accuracy, mean training seconds) from a default_recipe.py output's `mean` line."""
    line = next(l for l in (BENCH / name).read_text(encoding="utf-8").splitlines() if l.startswith("mean"))
    acc, secs = re.match(r"mean\s+([\d.]+)%\s+([\d.]+)", line).groups()
    return acc, secs


def test_the_default_recipes_headline_numbers_are_those_of_its_outputs():
    acc, secs = _mean_line("default_recipe_epyc-avx512.txt")
    _, rerun_secs = _mean_line("default_recipe_rerun-12-03_epyc-avx512.txt")
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    assert f"**{acc}%** over 3 seeds" in section
    assert f"in {secs} s of training per seed" in section
    assert f"{rerun_secs} s on a slower machine" in section
    assert "`default_recipe_epyc-avx512.txt`" in section and "`default_recipe_rerun-12-03_epyc-avx512.txt`" in section


def _best_preset_rows(name: str) -> list[str]:
    """The README table rows that best_preset.py's output NAME gives (mean, std and each seed's accuracy)."""
    text = (BENCH / name).read_text(encoding="utf-8")
    header, *rows = [l for l in text.splitlines() if re.match(r"^(seed  test|\s+\d+\s+\d)", l)]
    columns = re.split(r"\s{2,}", header.strip())
    table = [dict(zip(columns, re.split(r"\s{2,}", r.strip()))) for r in rows]
    stats = {k: (m, s) for k, m, s in re.findall(r"^(test %|EMA %|EMA\+TTA %)\s+mean ([\d.]+)%\s+std ([\d.]+)",
                                                  text, re.M)}
    ensemble = re.search(r"\(EMA\): ([\d.]+)%", text).group(1)
    ensemble_tta = re.search(r"\(EMA\+TTA\): ([\d.]+)%", text).group(1)
    out = []
    for label, column in (("plain weights (best.ckpt)", "test %"), ("weight average (ema.ckpt)", "EMA %"),
                          ("weight average + TTA", "EMA+TTA %")):
        mean, std = stats[column]
        seeds = ", ".join(f"{float(r[column]):.2f}" for r in table)
        out.append(rf"\| {re.escape(label)} \| (\*\*)?{float(mean):.2f}%(\*\*)? \| {float(std):.2f} \| "
                   rf"{re.escape(seeds)} \|")
    out.append(re.escape(f"| ensemble of the 3 weight averages | {ensemble}% ({ensemble_tta}% with TTA) | | |"))
    return out


@pytest.mark.parametrize("name", ["best_preset_vgg-28-epochs_epyc-avx512.txt", "best_preset_epyc-avx512.txt"])
def test_the_best_presets_tables_are_those_of_their_outputs(name):
    assert f"`{name}`" in README or f"`benchmarks/{name}`" in README
    for row in _best_preset_rows(name):
        assert re.search(row, README), f"README has no row matching {row!r} (from {name})"


def _eval_seconds(name: str, path: str) -> str:
    """'min-max' seconds, to 2 decimals, of the 10,000-image rows of evaluate_speed.py's output NAME for PATH."""
    secs = [float(l.split()[2]) for l in (BENCH / name).read_text(encoding="utf-8").splitlines()
            if l.split()[:2] == [path, "10000"]]
    assert secs, f"no {path} rows in {name}"
    return f"{min(secs):.2f}-{max(secs):.2f} s"


@pytest.mark.parametrize(("name", "path", "quoted"), [
    ("evaluate_speed.txt", "NHWC", "**{}** on 2 threads"),
    ("evaluate_speed_xeon.txt", "NHWC", "{} on the Xeon"),
    ("evaluate_speed_epyc-avx512.txt", "oneDNN", "the oneDNN path: **{}**"),
    ("evaluate_speed_epyc-avx512.txt", "NHWC", "channels-last forward {}"),
    ("evaluate_speed_epyc-avx512.txt", "NCHW", "NCHW {}"),
])
def test_quoted_evaluation_times_span_the_outputs_rounds(name, path, quoted):
    # The Xeon's two rounds took 0.335 and 0.353 s; the README said "0.34 s", as if there were one.
    assert quoted.format(_eval_seconds(name, path)) in README


def test_the_two_convs_a_stage_net_and_the_cnn_preset_macs_are_as_quoted():
    head = dict(kernel_size=3, batch_norm=True, hidden=[256], dropout=0.3)
    vgg = count_macs(build_model("vgg", channels=[32, 32, "M", 64, 64, "M", 128, 128, "M"], **head))
    cnn = count_macs(build_model("cnn", channels=[64, 128, 256], **head))  # configs/best.toml until 2026-12-01
    assert f"({vgg / 1e6:.1f}M against the preset's {cnn / 1e6:.1f}M)" in README
