"""How the command line's defaults were chosen: `ctjax train` on each preset, with its defaults and
with the alternatives they were chosen over, then `ctjax eval` (1-step and 2-step W1 against fresh
target samples, as multiples of the finite-sample floor W1(data, data')).

Each candidate is one `python -m ctjax train` subprocess (compile time included, as a user sees it);
the wall and CPU seconds of the whole run (training, evaluation, figures) are recorded. Writes
benchmarks/results/cli_defaults.json (rows of earlier runs not repeated this time are kept) and
prints the table of docs/benchmarks.md.

    python benchmarks/cli_defaults.py [--only SUBSTRING,...] [--list]
"""

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time


RESULTS = pathlib.Path(__file__).parent / "results"

# (preset, label, extra arguments). "defaults" rows pass nothing but the preset (and the method,
# where it is the alternative): they measure exactly what a user gets.
CANDIDATES = [
    ("gmm2d", "defaults", []),
    ("gmm2d", "cd", ["--method", "cd"]),
    ("gaussian", "defaults", []),
    ("gaussian", "cd", ["--method", "cd"]),
    ("digits", "defaults", []),
    ("digits", "cd", ["--method", "cd"]),
    ("digits", "MLP width 512", ["--model.width", "512"]),
    # The ConvNet costs about 4x the MLP per step here: fewer steps and a smaller batch keep it
    # within the same few minutes.
    (
        "digits",
        "ConvNet, 32 channels",
        ["--model.architecture", "conv", "--model.width", "32", "--batch-size", "128", "--steps", "3000"],
    ),
    # ECT as its paper runs it (tuning a denoising pre-trained model) against ECT from scratch, at
    # the same 8000 steps in all.
    ("gmm2d", "ECT from scratch", ["--method", "ect"]),
    ("gmm2d", "ECT after 2000 denoising steps", ["--method", "ect", "--ect.pretrain-steps", "2000", "--steps", "6000"]),
    ("gmm2d", "ECT after 4000 denoising steps", ["--method", "ect", "--ect.pretrain-steps", "4000", "--steps", "4000"]),
]


def _cpu_seconds_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_candidate(preset: str, label: str, args: list[str], workdir: pathlib.Path) -> dict:
    out = workdir / f"{preset}-{len(os.listdir(workdir))}"
    command = [sys.executable, "-m", "ctjax", "train", "--preset", preset, "--out", str(out), "--no-progress", *args]
    cpu0, wall0 = _cpu_seconds_of_children(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds_of_children() - cpu0
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    evaluation = json.loads((out / "eval.json").read_text())
    config = json.loads((out / "config.json").read_text())
    floor = evaluation["w1_floor"]
    return {
        "preset": preset,
        "label": label,
        "args": args,
        "method": config["method"],
        "steps": config["steps"],
        "pretrain_steps": config.get("ect", {}).get("pretrain_steps", 0) if config["method"] == "ect" else 0,
        "batch_size": config["batch_size"],
        "model": config["model"],
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "w1_floor": floor,
        "w1_exact_ode": evaluation["w1_exact_ode"],
        "w1_1step": evaluation["w1_1step"],
        "w1_2step": evaluation["w1_2step"],
        "ratio_1step": evaluation["w1_1step"] / floor,
        "ratio_2step": evaluation["w1_2step"] / floor,
        "map_error": evaluation["map_error"],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| preset | run | method | network | steps | batch | 1-step W1 (x floor) | 2-step W1 (x floor) "
        "| exact ODE (x floor) | wall s | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        model = r["model"]
        net = f"{model['architecture']} {model['width']}"
        steps = f"{r['pretrain_steps']} + {r['steps']}" if r.get("pretrain_steps") else str(r["steps"])
        lines.append(
            f"| {r['preset']} | {r['label']} | {r['method']} | {net} | {steps} | {r['batch_size']} "
            f"| {r['w1_1step']:.4f} ({r['ratio_1step']:.2f}x) | {r['w1_2step']:.4f} ({r['ratio_2step']:.2f}x) "
            f"| {r['w1_exact_ode'] / r['w1_floor']:.2f}x | {r['wall_seconds']:.0f} | {r['cpu_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated substrings of 'preset: label' to run")
    parser.add_argument("--list", action="store_true", help="list the candidates and exit")
    opts = parser.parse_args()
    chosen = [c for c in CANDIDATES if not opts.only or any(s in f"{c[0]}: {c[1]}" for s in opts.only.split(","))]
    if opts.list:
        for preset, label, args in chosen:
            print(f"{preset}: {label}  {' '.join(args)}")
        return
    path = RESULTS / "cli_defaults.json"
    previous = json.loads(path.read_text()) if path.exists() else []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset, label, args in chosen:
            print(f"{preset}: {label} ...", flush=True)
            rows.append(run_candidate(preset, label, args, pathlib.Path(tmp)))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    done = {(r["preset"], r["label"]) for r in rows}
    order = {(p, lab): i for i, (p, lab, _) in enumerate(CANDIDATES)}
    # Rows of candidates that are no longer listed are dropped.
    kept = [r for r in previous if (r["preset"], r["label"]) not in done and (r["preset"], r["label"]) in order]
    merged = sorted(kept + rows, key=lambda r: order[(r["preset"], r["label"])])
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(merged, indent=2))
    print(table(merged))


if __name__ == "__main__":
    main()
