#!/usr/bin/env python3
"""5-domain dev figures of the ctxnorm runs (docs/reproduction.md §11)."""
import json, os, statistics as st, sys
O = "/work/runs-ctxnorm"
T = ('bible', 'conversation', 'it', 'koran', 'names')
print('| context_norm | seed | step | dev BLEU | ' + ' / '.join(T) + ' | dev loss | experts/token enc | dec | all | task acc |')
print('|---|---|---|---|---|---|---|---|---|---|')
for s in (1, 2):
    for n in ('none', 'match-state'):
        d = f'{O}/md-{n}-s{s}'
        if not os.path.exists(d + '/metrics.jsonl'): continue
        for line in open(d + '/metrics.jsonl'):
            r = json.loads(line)
            if r.get('split') != 'dev': continue
            L = r['experts_per_token_by_layer']
            print(f"| {n} | {s} | {r['step']} | {r['bleu']:.2f} | {' / '.join('%.2f' % r['bleu_' + t] for t in T)} | {r['loss']:.3f} | "
                  f"{L['encoder.layers.1.moe']:.3f} | {L['decoder.layers.1.moe']:.3f} | {r['experts_per_token']:.3f} | {r.get('task_accuracy', 0):.3f} |")
