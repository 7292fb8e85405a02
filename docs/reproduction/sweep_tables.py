#!/usr/bin/env python3
"""Markdown tables for reproduction.md §10: settings of THOR top-p against the default, on dev.

usage: sweep_tables.py [--step N] REF_LABEL=DIR[,DIR...] LABEL=DIR[,DIR...] ...  (split at the last "=")
Each DIR is a `thor train --save-dir` (config.json + metrics.jsonl; shell globs are expanded).
The first argument is the reference (the default), paired by seed with every other setting.
Reads the dev record of step N (default 800) of each run's metrics.jsonl (the last one written
for that step, so a run continued with --resume counts once) and the seed from config.json.
Prints per setting and seed: dev BLEU (average and per task), experts per token (overall and per
MoE layer), task accuracy; mean ± sd per setting; then the differences to the reference paired
by seed, with the paired t statistic (df = n − 1; |t| > 12.71 at n = 2, > 4.30 at n = 3 is
p < 0.05 two-sided). It also prints each setting's configuration keys that differ from the
reference's (a check that the runs differ only in what the label says).
A FILE.json in place of a DIR is the output of `thor eval checkpoint --json` (test-set figures),
its seed taken from the name `…-sSEED.json`.
"""
import glob, json, os, re, sys, statistics as st

args = sys.argv[1:]
step = 800
if args and args[0] == "--step":
    step = int(args[1]); args = args[2:]
if not args:
    sys.exit(__doc__)


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict): out.update(flat(v, prefix + k + "."))
        else: out[prefix + k] = v
    return out


settings = []  # (label, {seed: record}, config of one run)
for a in args:
    label, ds = a.rsplit("=", 1)  # the label may contain "="; the directories do not
    dirs = sorted(d for pat in ds.split(",") for d in (glob.glob(pat) or [pat]) if os.path.isdir(d) or d.endswith(".json"))
    runs, cfg = {}, None
    for d in dirs:
        if d.endswith(".json"):  # `thor eval checkpoint --json` output, named …-sSEED.json
            seed = int(re.search(r"-s(\d+)\.json$", d).group(1))
            assert seed not in runs, f"{label}: seed {seed} found twice ({d})"
            runs[seed] = json.load(open(d)); continue
        mpath, cpath = os.path.join(d, "metrics.jsonl"), os.path.join(d, "config.json")
        if not os.path.exists(mpath) or not os.path.exists(cpath):
            print(f"<!-- {label}: {d} has no metrics.jsonl/config.json, left out -->", file=sys.stderr); continue
        c = flat(json.load(open(cpath)))
        seed = c["training.seed"]
        recs = [r for r in map(json.loads, open(mpath)) if r.get("split") == "dev" and r.get("step") == step]
        if not recs:
            print(f"<!-- {label}: {d} has no dev record at step {step}, left out -->", file=sys.stderr); continue
        assert seed not in runs, f"{label}: seed {seed} found twice ({d})"
        runs[seed] = recs[-1]
        c.pop("training.seed"); c.pop("training.max_steps", None)
        assert cfg is None or cfg == c, f"{label}: runs differ in configuration ({d})"
        cfg = c
    settings.append((label, runs, cfg))

ref_label, ref_runs, ref_cfg = settings[0]
tasks = sorted(k[5:] for k in next(iter(ref_runs.values())) if k.startswith("bleu_"))
layers = sorted(next(iter(ref_runs.values())).get("experts_per_token_by_layer", {}), key=lambda l: (not l.startswith("encoder"), l))
short = {l: l.split(".")[0][:3] + "." + l.split(".")[2] for l in layers}  # encoder.layers.1.moe -> enc.1


def fields(r):
    f = {"BLEU": r["bleu"], **{t: r.get("bleu_" + t) for t in tasks},
         "exp/tok": r.get("experts_per_token"),
         **{short[l]: r.get("experts_per_token_by_layer", {}).get(l) for l in layers},
         "task acc": r.get("task_accuracy")}
    return f


cols = ["BLEU"] + tasks + ["exp/tok"] + [short[l] for l in layers] + ["task acc"]
prec = {c: 2 for c in ["BLEU"] + tasks}
prec.update({c: 3 for c in ["exp/tok", "task acc"] + [short[l] for l in layers]})


def ms(xs, n):
    xs = [x for x in xs if x is not None]
    if not xs: return "–"
    if len(xs) == 1: return f"{xs[0]:.{n}f}"
    return f"{st.mean(xs):.{n}f} ± {st.stdev(xs):.{n}f}"


if any(a.endswith(".json") for a in args):
    print("Test set (`thor eval checkpoint --json`, 400 sentences, greedy), per seed and mean ± sd.\n")
else:
    print(f"Dev set at step {step} (200 of 400 dev sentences, greedy), per seed and mean ± sd.\n")
print("| setting | seed | " + " | ".join(cols) + " |")
print("|---|---|" + "---|" * len(cols))
for label, runs, cfg in settings:
    F = {s: fields(runs[s]) for s in sorted(runs)}
    for s, f in F.items():
        print(f"| {label} | {s} | " + " | ".join("–" if f[c] is None else f"{f[c]:.{prec[c]}f}" for c in cols) + " |")
    if len(F) > 1:
        print(f"| **{label}** | mean ± sd | " + " | ".join(ms([f[c] for f in F.values()], prec[c]) for c in cols) + " |")
print()
print(f"Paired by seed: setting minus {ref_label} (per seed; mean; paired t, df = n − 1).\n")
dcols = ["BLEU", "exp/tok"] + [short[l] for l in layers] + ["task acc"]
print("| setting | seeds | " + " | ".join(f"Δ {c} per seed | mean | t" for c in dcols) + " |")
print("|---|---|" + "---|---|---|" * len(dcols))
for label, runs, cfg in settings[1:]:
    seeds = sorted(set(runs) & set(ref_runs))
    if not seeds: continue
    cells = []
    for c in dcols:
        d = [fields(runs[s])[c] - fields(ref_runs[s])[c] for s in seeds
             if fields(runs[s])[c] is not None and fields(ref_runs[s])[c] is not None]
        if not d: cells += ["–", "–", "–"]; continue
        n = prec[c]
        m = st.mean(d)
        if len(d) >= 2 and st.stdev(d) > 0: t = f"{m / (st.stdev(d) / len(d) ** 0.5):+.1f}"
        else: t = "–"
        cells += [" / ".join(f"{x:+.{n}f}" for x in d), f"{m:+.{n}f}", t]
    print(f"| {label} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
print()
for label, runs, cfg in settings[1:]:
    if cfg is None or ref_cfg is None: continue
    diff = {k: (ref_cfg.get(k), cfg.get(k)) for k in set(ref_cfg) | set(cfg) if ref_cfg.get(k) != cfg.get(k)}
    print(f"<!-- {label} differs from {ref_label} in: "
          + (", ".join(f"{k} {a} → {b}" for k, (a, b) in sorted(diff.items())) or "nothing") + " -->")
