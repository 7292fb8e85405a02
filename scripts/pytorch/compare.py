#!/usr/bin/env python3
"""thor against eager PyTorch on this machine, interleaved.

Each round runs, in this order: `thor bench moe --json`, moe_layer.py --json (every PyTorch
configuration), `thor bench distributed --json`, `thor bench train --json`, train_step.py
--json (every PyTorch configuration). After --rounds rounds it prints the medians and ranges
over rounds and the issue-11 goal ratios, each computed within one round and then summarized:

  thor top-2 / PyTorch top-2                       (bench moe)
  thor THOR top-p / PyTorch THOR top-p             (bench moe; bench distributed: in process, distributed)
  thor train step / PyTorch train step             (bench train: in process, 2 workers)

Goals (issue 11): distributed THOR top-p ≥ 1.2 × PyTorch THOR top-p; thor bench train in
process ≥ 1.2 × PyTorch's step rate. Each is judged against every PyTorch configuration and
against the fastest one of each round ("best").

PyTorch configurations (--torch-configs):
  stock           the wheel as installed, OpenMP's default wait policy
  stock-passive   OMP_WAIT_POLICY=PASSIVE
  avx512          --mkl-avx512 (MKL told the CPU is an Intel one: its AVX-512 kernels on AMD)
  avx512-passive  both

thor runs with OPENBLAS_CORETYPE unset (thor picks SkylakeX on AVX-512 CPUs); PyTorch with
--threads threads (default 2, as thor's benches). `--json FILE` writes every row.
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIGS = {"stock": (False, False), "stock-passive": (False, True), "avx512": (True, False), "avx512-passive": (True, True)}


def run_json(cmd, env, label, timeout):
    t0 = time.time()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"{label}: no result after {timeout} s: {' '.join(cmd)}")
    if p.returncode != 0:
        sys.exit(f"{label} failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    for line in reversed(p.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            out = json.loads(line)
            out["wall_s"] = round(time.time() - t0, 1)
            return out
    sys.exit(f"{label}: no JSON object on stdout: {' '.join(cmd)}\n{p.stdout[-2000:]}")


def median(xs):
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--thor", default=os.path.join(REPO, ".build", "release", "thor"),
                    help="thor binary (default: this checkout's .build/release/thor)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="--repeats passed to every bench and script (default: their own default, 3)")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    ap.add_argument("--torch-configs", default="stock,avx512,avx512-passive",
                    help=f"comma-separated, of {', '.join(CONFIGS)} (default: stock,avx512,avx512-passive)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: moe, distributed, train")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds one bench may take (default 1800)")
    ap.add_argument("--json", metavar="FILE", help="write every row and the summary as JSON to FILE")
    args = ap.parse_args()

    configs = [c for c in args.torch_configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            sys.exit(f"--torch-configs: unknown configuration {c!r} (one of {', '.join(CONFIGS)})")
    skip = {s for s in args.skip.split(",") if s}
    for s in skip:
        if s not in ("moe", "distributed", "train"):
            sys.exit(f"--skip: unknown part {s!r} (moe, distributed, train)")
    if args.rounds < 1:
        sys.exit(f"--rounds must be ≥ 1, got {args.rounds}")
    if not (os.path.isfile(args.thor) and os.access(args.thor, os.X_OK)):
        sys.exit(f"--thor: {args.thor} is not an executable file (build with `swift build -c release` or pass --thor)")

    thor_env = dict(os.environ)
    thor_env.pop("OPENBLAS_CORETYPE", None)
    thor_env["THOR_BINARY"] = os.path.abspath(args.thor)      # the workers the benches spawn: this binary
    rep = [] if args.repeats is None else ["--repeats", str(args.repeats)]

    def torch_env(config):
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        if CONFIGS[config][1]:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        else:
            env.pop("OMP_WAIT_POLICY", None)
        return env

    def torch_cmd(script, config):
        cmd = [sys.executable, os.path.join(HERE, script), "--json", "--threads", str(args.threads)] + rep
        return cmd + (["--mkl-avx512"] if CONFIGS[config][0] else [])

    rows = []

    def record(rnd, part, side, config, cmd, env):
        load = round(os.getloadavg()[0], 2)
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
        label = f"round {rnd} {side} {part}" + (f" ({config})" if config else "")
        print(f"[{started} load {load}] {label} …", file=sys.stderr, flush=True)
        out = run_json(cmd, env, label, args.timeout)
        rows.append({"round": rnd, "part": part, "side": side, "config": config, "started_utc": started,
                     "load_before": load, "result": out})
        return out

    print(f"thor: {args.thor}; PyTorch configurations: {', '.join(configs)}; {args.rounds} rounds", file=sys.stderr)
    for rnd in range(1, args.rounds + 1):
        if "moe" not in skip:
            record(rnd, "moe", "thor", None, [args.thor, "bench", "moe", "--json"] + rep, thor_env)
            for c in configs:
                record(rnd, "moe", "pytorch", c, torch_cmd("moe_layer.py", c), torch_env(c))
        if "distributed" not in skip:
            record(rnd, "distributed", "thor", None, [args.thor, "bench", "distributed", "--json"] + rep, thor_env)
        if "train" not in skip:
            record(rnd, "train", "thor", None, [args.thor, "bench", "train", "--json"] + rep, thor_env)
            for c in configs:
                record(rnd, "train", "pytorch", c, torch_cmd("train_step.py", c), torch_env(c))

    summary = summarize(rows, configs, args.rounds)
    print_summary(summary, rows, args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"thor": os.path.abspath(args.thor), "rounds": args.rounds, "threads": args.threads,
                       "torch_configs": configs, "summary": summary, "rows": rows}, fh, indent=1, sort_keys=True)
        print(f"rows written to {args.json}", file=sys.stderr)


def summarize(rows, configs, rounds):
    """Per-round figures and ratios → {name: {"values": [...], "median": m, "min": a, "max": b}}."""
    per_round = {}

    def put(rnd, name, value):
        if value is not None:
            per_round.setdefault(name, {})[rnd] = value

    for rnd in range(1, rounds + 1):
        got = {(r["part"], r["side"], r["config"]): r["result"] for r in rows if r["round"] == rnd}
        tm, td, tt = got.get(("moe", "thor", None)), got.get(("distributed", "thor", None)), got.get(("train", "thor", None))
        if tm:
            for k in ("top2_tokens_per_s", "thor_topp_tokens_per_s", "thor_topp_experts_per_token", "gemm_gflops_2t",
                      "top2_over_gemm_bound", "thor_topp_over_gemm_bound"):
                put(rnd, f"thor moe {k}", tm.get(k))
        if td:
            for k in ("in_process_tokens_per_s", "distributed_tokens_per_s", "distributed_over_in_process", "experts_per_token"):
                put(rnd, f"thor distributed {k}", td.get(k))
        if tt:
            for k in ("in_process_ms_per_step", "in_process_target_tokens_per_s", "distributed_ms_per_step",
                      "distributed_target_tokens_per_s"):
                put(rnd, f"thor train {k}", tt.get(k))
        best_moe_top2 = best_moe_topp = best_train = None
        for c in configs:
            pm, pt = got.get(("moe", "pytorch", c)), got.get(("train", "pytorch", c))
            if pm:
                for k in ("top2_tokens_per_s", "thor_topp_tokens_per_s", "thor_topp_experts_per_token", "gemm_gflops",
                          "top2_over_gemm_bound", "thor_topp_over_gemm_bound"):
                    put(rnd, f"pytorch[{c}] moe {k}", pm.get(k))
                best_moe_top2 = max(best_moe_top2 or 0, pm["top2_tokens_per_s"]) if "top2_tokens_per_s" in pm else best_moe_top2
                best_moe_topp = max(best_moe_topp or 0, pm["thor_topp_tokens_per_s"]) if "thor_topp_tokens_per_s" in pm else best_moe_topp
            if pt:
                for k in ("ms_per_step", "target_tokens_per_s", "experts_per_token"):
                    put(rnd, f"pytorch[{c}] train {k}", pt.get(k))
                best_train = max(best_train or 0, pt["target_tokens_per_s"])
        for c, top2, topp, train in [(c, (got.get(("moe", "pytorch", c)) or {}).get("top2_tokens_per_s"),
                                      (got.get(("moe", "pytorch", c)) or {}).get("thor_topp_tokens_per_s"),
                                      (got.get(("train", "pytorch", c)) or {}).get("target_tokens_per_s"))
                                     for c in configs] + [("best", best_moe_top2, best_moe_topp, best_train)]:
            if tm and top2:
                put(rnd, f"ratio[{c}] thor top2 / pytorch top2", round(tm["top2_tokens_per_s"] / top2, 3))
            if tm and topp:
                put(rnd, f"ratio[{c}] thor topp in process (bench moe) / pytorch topp", round(tm["thor_topp_tokens_per_s"] / topp, 3))
            if td and topp:
                put(rnd, f"ratio[{c}] thor topp in process (bench distributed) / pytorch topp", round(td["in_process_tokens_per_s"] / topp, 3))
                put(rnd, f"ratio[{c}] thor topp distributed / pytorch topp  (goal >= 1.2)", round(td["distributed_tokens_per_s"] / topp, 3))
            if tt and train:
                put(rnd, f"ratio[{c}] thor train in process / pytorch train  (goal >= 1.2)", round(tt["in_process_target_tokens_per_s"] / train, 3))
                if "distributed_target_tokens_per_s" in tt:
                    put(rnd, f"ratio[{c}] thor train 2 workers / pytorch train", round(tt["distributed_target_tokens_per_s"] / train, 3))
    summary = {}
    for name, by_round in per_round.items():
        values = [by_round[r] for r in sorted(by_round)]
        summary[name] = {"values": values, "median": median(values), "min": min(values), "max": max(values)}
        if "(goal >= 1.2)" in name:
            summary[name]["goal_met_rounds"] = f"{sum(v >= 1.2 for v in values)} of {len(values)}"
    return summary


def per_round_table(rows, configs, rounds):
    """One Markdown row per round: the figures the goals compare (tokens/s; train: target tokens/s)."""
    def get(rnd, part, side, config=None):
        return next((r for r in rows if (r["round"], r["part"], r["side"], r["config"]) == (rnd, part, side, config)), None)
    head = (["round", "load", "thor sgemm / top-2 / THOR top-p"] + [f"PyTorch {c}: sgemm / top-2 / THOR top-p" for c in configs]
            + ["thor distributed: in process / 2 workers", "thor train: in process / 2 workers"] + [f"PyTorch {c} train" for c in configs])
    lines = []
    for rnd in range(1, rounds + 1):
        loads = [r["load_before"] for r in rows if r["round"] == rnd]
        cells = [str(rnd), f"{min(loads):.1f}–{max(loads):.1f}"]
        tm = get(rnd, "moe", "thor")
        cells.append(f"{tm['result']['gemm_gflops_2t']:.0f} / {tm['result']['top2_tokens_per_s']:,.0f} / "
                     f"{tm['result']['thor_topp_tokens_per_s']:,.0f}" if tm else "")
        for c in configs:
            p = get(rnd, "moe", "pytorch", c)
            cells.append(f"{p['result']['gemm_gflops']:.0f} / {p['result'].get('top2_tokens_per_s', 0):,.0f} / "
                         f"{p['result'].get('thor_topp_tokens_per_s', 0):,.0f}" if p else "")
        td, tt = get(rnd, "distributed", "thor"), get(rnd, "train", "thor")
        cells.append(f"{td['result']['in_process_tokens_per_s']:,.0f} / {td['result']['distributed_tokens_per_s']:,.0f}" if td else "")
        cells.append(f"{tt['result']['in_process_target_tokens_per_s']:,.0f} / "
                     f"{tt['result'].get('distributed_target_tokens_per_s', 0):,.0f}" if tt else "")
        for c in configs:
            p = get(rnd, "train", "pytorch", c)
            cells.append(f"{p['result']['target_tokens_per_s']:,.0f}" if p else "")
        lines.append(cells)
    keep = [i for i in range(len(head)) if any(row[i] for row in lines)]   # drop the parts --skip left out
    return "\n".join(["| " + " | ".join(head[i] for i in keep) + " |", "|" + "---|" * len(keep)]
                     + ["| " + " | ".join(row[i] for i in keep) + " |" for row in lines])


def print_summary(summary, rows, args):
    loads = [r["load_before"] for r in rows]
    print(f"thor ({args.thor}) against eager PyTorch, {args.rounds} interleaved rounds, "
          f"load average {min(loads):.1f}–{max(loads):.1f} (1-minute, before each bench)")
    width = max(len(k) for k in summary)
    print(f"{'':{width}}  {'median':>10}  {'min':>10}  {'max':>10}  goal met")
    for name in summary:
        s = summary[name]
        fmt = (lambda v: f"{v:,.0f}") if s["median"] >= 100 else (lambda v: f"{v:.3f}")
        print(f"{name:{width}}  {fmt(s['median']):>10}  {fmt(s['min']):>10}  {fmt(s['max']):>10}  {s.get('goal_met_rounds', '')}")
    configs = sorted({r["config"] for r in rows if r["config"]}, key=list(CONFIGS).index)
    print("\nPer round (Markdown):")
    print(per_round_table(rows, configs, args.rounds))


if __name__ == "__main__":
    main()
