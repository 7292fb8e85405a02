#!/usr/bin/env python3
"""Markdown table of gate_analysis.py output (JSON lines on stdin) for reproduction.md §9.5."""
import json, sys

labels = {'thor-topp': 'THOR top-p', 'topp': 'top-p', 'no-context': 'w/o context gate', 'no-task-level': 'w/o task level'}
print("| variant (seed) | layer | experts/token: trained h̃ / h̃ := h / h̃ := c / h̃ rescaled to ‖h‖ | entropy of p (nats): h̃ / h / c | logit sd over candidates: h̃ / h | gate g: mean (p10–p90) | ‖h‖ / ‖c‖ / ‖h̃‖ | cos(h, c) |")
print("|---|---|---|---|---|---|---|---|")
for line in sys.stdin:
    r = json.loads(line)
    tag = r['checkpoint'].rstrip('/').split('/')[-1]
    step = '' if tag == 'checkpoint-last' else f", step {tag.split('-')[-1]}"
    for k in ('encoder.layers.1.moe', 'decoder.layers.1.moe'):
        if k not in r: continue
        o = r[k]; gate = 'g' in o
        n = f"**{o['n_true']:.3f}**" + (f" / {o['n_noctx']:.3f} / {o['n_ctxonly']:.3f} / {o['n_rescaled']:.3f}" if gate else f" (no gate; h := c: {o['n_ctxonly']:.3f})")
        H = f"{o['H_true']:.3f}" + (f" / {o['H_noctx']:.3f} / {o['H_ctxonly']:.3f}" if gate else f" (h := c: {o['H_ctxonly']:.3f})")
        z = f"{o['zspread_true']:.2f}" + (f" / {o['zspread_noctx']:.2f}" if gate else "")
        g = f"{o['g']:.3f} ({o['g_p10_p50_p90'][0]:.2f}–{o['g_p10_p50_p90'][2]:.2f})" if gate else "–"
        norms = f"{o['nh']:.2f} / {o['nc']:.2f} / " + (f"{o['nht']:.2f}" if gate else "–")
        print(f"| {labels[r['variant']]} ({r['seed']}{step}) | {k.split('.')[0]} | {n} | {H} | {z} | {g} | {norms} | {o['cos_hc']:.2f} |")
