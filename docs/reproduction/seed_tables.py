#!/usr/bin/env python3
"""Markdown tables for reproduction.md §9: the 5-domain sweep of §8 over seeds.

usage: seed_tables.py SEED=SWEEP_DIR[,SWEEP_DIR...] [SEED=...]
Each SWEEP_DIR is an `--out` of `thor experiment paper` (one result.json per variant); a variant
found in several directories of one seed is an error.
Per variant: mean, min–max and (n ≥ 3) the sample sd over the seeds found; then, paired by seed,
THOR top-p minus each other variant, with the paired t statistic (df = n − 1).
"""
import json, os, sys, statistics as st

order = ["top2", "topp", "thor-topp", "no-task-level", "no-context", "dense"]
sweeps = [(int(a.split('=')[0]), a.split('=')[1]) for a in sys.argv[1:]]
res = {}  # variant -> seed -> result
for seed, ds in sweeps:
    for d, v in ((d, v) for d in ds.split(',') for v in order):
        p = f"{d}/{v}/result.json"
        if os.path.exists(p):
            assert seed not in res.get(v, {}), f"{v} of seed {seed} found twice"
            r = json.load(open(p))
            cfg = json.loads(r['configuration'])
            assert cfg['training']['seed'] == seed, (p, cfg['training']['seed'])
            res.setdefault(v, {})[seed] = r
labels = {v: next(iter(res[v].values()))['label'] for v in res}
tasks = next(iter(next(iter(res.values())).values()))['tasks']


def agg(xs, n=2):
    xs = [x for x in xs if x is not None]
    if not xs: return "–"
    if len(xs) == 1: return f"{xs[0]:.{n}f} (1 seed)"
    s = f"{st.mean(xs):.{n}f} ({min(xs):.{n}f}–{max(xs):.{n}f}"
    if len(xs) >= 3: s += f", sd {st.stdev(xs):.{n}f}"
    return s + ")"


def fields(r):
    lay = r.get('expertsPerTokenByLayer') or [None, None]
    return {'bleu': r['averageBLEU'], 'loss': r['loss'], 'ept': r.get('expertsPerToken'),
            'enc': lay[0] if lay else None, 'dec': lay[1] if len(lay) > 1 else None, 'acc': r.get('taskAccuracy'),
            **{t: b for t, b in zip(tasks, r['bleu'])}}


print("Per variant over the seeds it ran: mean (min–max, sd when n ≥ 3).\n")
print("| variant | seeds | average BLEU | per seed | test L_mt | experts/token | encoder MoE | decoder MoE | task accuracy |")
print("|---|---|---|---|---|---|---|---|---|")
for v in order:
    if v not in res: continue
    seeds = sorted(res[v]); F = [fields(res[v][s]) for s in seeds]
    print(f"| {labels[v]} | {','.join(map(str, seeds))} | **{agg([f['bleu'] for f in F])}** | "
          + " / ".join(f"{f['bleu']:.2f}" for f in F)
          + f" | {agg([f['loss'] for f in F], 3)} | {agg([f['ept'] for f in F], 3)} | {agg([f['enc'] for f in F], 3)} | "
          f"{agg([f['dec'] for f in F], 3)} | {agg([f['acc'] for f in F], 3)} |")
print()
print("Per-domain test BLEU: mean (min–max, sd when n ≥ 3).\n")
print("| variant | " + " | ".join(tasks) + " |")
print("|---" * (len(tasks) + 1) + "|")
for v in order:
    if v not in res: continue
    seeds = sorted(res[v]); F = [fields(res[v][s]) for s in seeds]
    print(f"| {labels[v]} | " + " | ".join(agg([f[t] for f in F]) for t in tasks) + " |")
print()
print("Paired by seed: THOR top-p minus the variant (per seed; mean ± sd; paired t, df = n − 1;"
      " |t| > 4.30 is p < 0.05 two-sided at n = 3).\n")
print("| THOR top-p minus | seeds | Δ average BLEU per seed | Δ BLEU mean ± sd | t | Δ test L_mt per seed | Δ L_mt mean | t | Δ experts/token per seed | Δ experts/token mean | t |")
print("|---|---|---|---|---|---|---|---|---|---|---|")


def paired(xs, n=2):
    if len(xs) < 2: return f"{xs[0]:+.{n}f}", "–"
    m, s = st.mean(xs), st.stdev(xs)
    t = m / (s / len(xs) ** 0.5) if s > 0 else float('inf')
    return f"{m:+.{n}f} ± {s:.{n}f}", f"{t:+.1f}"


for v in order:
    if v == 'thor-topp' or v not in res or 'thor-topp' not in res: continue
    seeds = sorted(set(res[v]) & set(res['thor-topp']))
    if not seeds: continue
    A = {s: fields(res['thor-topp'][s]) for s in seeds}; B = {s: fields(res[v][s]) for s in seeds}
    db = [A[s]['bleu'] - B[s]['bleu'] for s in seeds]
    dl = [A[s]['loss'] - B[s]['loss'] for s in seeds]
    de = [A[s]['ept'] - B[s]['ept'] for s in seeds if B[s]['ept'] is not None]
    mb, tb = paired(db); ml, tl = paired(dl, 3)
    if de:
        me = st.mean(de); se = st.stdev(de) if len(de) > 1 else 0
        te = f"{me / (se / len(de) ** 0.5):+.1f}" if len(de) > 1 and se > 0 else "–"
        des = " / ".join(f"{x:+.3f}" for x in de); mes = f"{me:+.3f}"
    else:
        des, mes, te = "–", "–", "–"
    print(f"| {labels[v]} | {','.join(map(str, seeds))} | " + " / ".join(f"{x:+.2f}" for x in db) + f" | {mb} | {tb} | "
          + " / ".join(f"{x:+.3f}" for x in dl) + f" | {ml} | {tl} | {des} | {mes} | {te} |")
print()
print("Wall-clock time per variant run as `result.json` gives it (s; data, training, test evaluation; of an interrupted and continued run only the last part; machine shared: see §9.1):\n")
print("| variant | " + " | ".join(f"seed {s}" for s, _ in sweeps) + " |")
print("|---" * (len(sweeps) + 1) + "|")
for v in order:
    if v not in res: continue
    print(f"| {labels[v]} | " + " | ".join(f"{res[v][s]['seconds']:.0f}" if s in res[v] else "–" for s, _ in sweeps) + " |")
