#!/usr/bin/env python3
"""Dev-set figures of the ctxnorm sweep (docs/reproduction.md §11): per run and mean ± sd per variant/option."""
import json, os, statistics as st, sys
O = sys.argv[1] if len(sys.argv) > 1 else '/work/runs-ctxnorm'
def dev(d, step):
    for line in open(os.path.join(d, 'metrics.jsonl')):
        r = json.loads(line)
        if r.get('split') == 'dev' and r['step'] == step: return r
rows = {}
for v, n in (('thor-topp', 'none'), ('thor-topp', 'match-state'), ('no-task-level', 'none'), ('no-task-level', 'match-state'), ('no-context', '–')):
        for s in (1, 2, 3):
            d = f'{O}/{v}-{n}-s{s}' if v != 'no-context' else f'{O}/no-context-s{s}'
            if not os.path.exists(d + "/dev800"): continue
            a, b = dev(d, 400), dev(d, 800)
            L = b['experts_per_token_by_layer']
            rows.setdefault((v, n), []).append(dict(seed=s, bleu=b['bleu'], loss=b['loss'], enc=L['encoder.layers.1.moe'],
                dec=L['decoder.layers.1.moe'], ept=b['experts_per_token'], acc=b.get('task_accuracy'),
                bleu400=a['bleu'], enc400=a['experts_per_token_by_layer']['encoder.layers.1.moe'],
                dec400=a['experts_per_token_by_layer']['decoder.layers.1.moe'],
                tasks=[b[f'bleu_{t}'] for t in ('it', 'law', 'medical', 'religion')]))
f = lambda x, k=2: '–' if x is None else f'{x:.{k}f}'
print('| variant | context_norm | seed | dev BLEU @800 | it / law / med / rel | dev loss | experts/token enc | dec | all | task acc | BLEU @400 | enc / dec @400 |')
print('|---|---|---|---|---|---|---|---|---|---|---|---|')
for (v, n), rs in rows.items():
    for r in rs:
        print(f"| {v} | {n} | {r['seed']} | {f(r['bleu'])} | {' / '.join(f(x,1) for x in r['tasks'])} | {f(r['loss'],3)} | {f(r['enc'],3)} | {f(r['dec'],3)} | {f(r['ept'],3)} | {f(r['acc'],3)} | {f(r['bleu400'])} | {f(r['enc400'],3)} / {f(r['dec400'],3)} |")
    if len(rs) > 1:
        m = lambda k: f"{st.mean(r[k] for r in rs):.{2 if k in ('bleu','bleu400') else 3}f} ± {st.stdev(r[k] for r in rs):.{2 if k in ('bleu','bleu400') else 3}f}"
        acc = m('acc') if all(r['acc'] is not None for r in rs) else '–'
        print(f"| {v} | {n} | mean ± sd ({len(rs)}) | **{m('bleu')}** | | {m('loss')} | **{m('enc')}** | {m('dec')} | {m('ept')} | {acc} | {m('bleu400')} | {m('enc400')} / {m('dec400')} |")
print()
print('Paired differences (match-state − none, same seed):')
for v in ('thor-topp', 'no-task-level'):
    a = {r['seed']: r for r in rows.get((v, 'none'), [])}; b = {r['seed']: r for r in rows.get((v, 'match-state'), [])}
    seeds = sorted(set(a) & set(b))
    if not seeds: continue
    for k in ('bleu', 'loss', 'enc', 'dec', 'ept', 'acc'):
        ds = [b[s][k] - a[s][k] for s in seeds if a[s][k] is not None]
        if not ds: continue
        sd = f' ± {st.stdev(ds):.3f}' if len(ds) > 1 else ''
        print(f"  {v} {k}: " + ', '.join(f'{x:+.3f}' for x in ds) + f"  mean {st.mean(ds):+.3f}{sd}")
print()
for v in ('thor-topp', 'no-task-level'):
    a = {r['seed']: r for r in rows.get((v, 'none'), [])}; b = {r['seed']: r for r in rows.get((v, 'match-state'), [])}
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2: continue
    cells = []
    for k, p in (('bleu', 2), ('loss', 3), ('enc', 3), ('dec', 3), ('ept', 3)):
        ds = [b[s][k] - a[s][k] for s in seeds]
        cells.append(f"{st.mean(ds):+.{p}f} ± {st.stdev(ds):.{p}f} ({', '.join(f'{x:+.{p}f}' for x in ds)})")
    print(f"| {v} | " + ' | '.join(cells) + ' |')
