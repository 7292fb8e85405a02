#!/usr/bin/env python3
"""The context gate in the encoder MoE layer, read from a checkpoint (reproduction.md §9.5).

Recomputes, in numpy, the encoder of a `thor` checkpoint up to the routing of the first encoder
MoE layer (SPEC §1–2: scaled embeddings + sinusoidal positions, pre-LN layers, the task level on
the FFN input of the first MoE layer, the sentence-mean context, the gate, the token router with
log q over the K candidates, top-p selection) on a corpus file (task<TAB>source<TAB>target), and
reports, per variant and MoE layer: experts per token (to check the recomputation against `thor eval`), the gate
values, the norms of h, c and h~, the spread of the router logits and the entropy of the routing
probabilities, with the trained gate and with the gate replaced by h~ = h (no context) and by
h~ = c (context only). Inference only (no dropout); no figure here feeds back into training.

usage: gate_analysis.py [--every N] [--decoder] CORPUS.tsv CHECKPOINT_DIR [CHECKPOINT_DIR ...]
(--every N: every N-th line of the corpus only; --decoder: also the decoder MoE layer, through a
teacher-forced pass that runs the encoder MoE layer's experts from the checkpoint)
"""
import json, struct, sys
import numpy as np

PAD, BOS, EOS, CLS = 0, 1, 2, 3


def load_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == '__metadata__' or k.endswith('.adam_m') or k.endswith('.adam_v'):
            continue
        assert v['dtype'] == 'F32', k
        a, b = v['data_offsets']
        out[k] = np.frombuffer(data[a:b], dtype='<f4').reshape(v['shape'])
    return out, header.get('__metadata__', {})


class BPE:
    """thor's BPETokenizer (Sources/ThorData/BPETokenizer.swift): byte pieces, ranked merges."""

    def __init__(self, path):
        lines = open(path, encoding='utf-8').read().split('\n')
        assert lines[0] == 'thor-bpe 1', lines[0]
        self.tags = lines[1].split()[1:]
        n = int(lines[2].split()[1])
        self.offset = 4 + len(self.tags)
        self.merges = [tuple(int(x) for x in lines[3 + i].split()) for i in range(n)]
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.cache = {}

    @staticmethod
    def cls(b):
        if b == 0x20 or 0x09 <= b <= 0x0D: return 0
        if b >= 0x80 or 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A: return 1
        if 0x30 <= b <= 0x39: return 2
        return 3

    @classmethod
    def pieces(cls_, bs):
        out, i, n = [], 0, len(bs)
        while i < n:
            start, c = i, cls_.cls(bs[i])
            if c == 0:
                if bs[i] == 0x20 and i + 1 < n and cls_.cls(bs[i + 1]) != 0:
                    k = cls_.cls(bs[i + 1]); i += 2
                    while i < n and cls_.cls(bs[i]) == k: i += 1
                else:
                    while i < n and cls_.cls(bs[i]) == 0: i += 1
                    if i < n and i - start > 1 and bs[i - 1] == 0x20: i -= 1
            else:
                while i < n and cls_.cls(bs[i]) == c: i += 1
            out.append(bytes(bs[start:i]))
        return out

    def encode_piece(self, p):
        if p in self.cache: return self.cache[p]
        sym = [self.offset + b for b in p]
        while len(sym) > 1:
            best = None
            for j in range(len(sym) - 1):
                r = self.ranks.get((sym[j], sym[j + 1]))
                if r is not None and (best is None or r < best): best = r
            if best is None: break
            l, r = self.merges[best]; new = self.offset + 256 + best
            nxt, j = [], 0
            while j < len(sym):
                if j + 1 < len(sym) and sym[j] == l and sym[j + 1] == r: nxt.append(new); j += 2
                else: nxt.append(sym[j]); j += 1
            sym = nxt
        self.cache[p] = sym
        return sym

    def encode(self, text):
        out = []
        for p in self.pieces(text.encode('utf-8')): out += self.encode_piece(p)
        return out


def layer_norm(x, w, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * w + b


def attention(x, P, pre, heads, bias=None, kv=None):
    n, d = x.shape; dh = d // heads
    kv = x if kv is None else kv
    q = x @ P[pre + '.wq'] + P[pre + '.bq']; k = kv @ P[pre + '.wk'] + P[pre + '.bk']; v = kv @ P[pre + '.wv'] + P[pre + '.bv']
    out = np.empty_like(x)
    for h in range(heads):
        s = slice(h * dh, (h + 1) * dh)
        a = q[:, s] @ k[:, s].T / np.float32(np.sqrt(dh))
        if bias is not None: a = a + bias
        a = np.exp(a - a.max(-1, keepdims=True)); a /= a.sum(-1, keepdims=True)
        out[:, s] = a @ v[:, s]
    return out @ P[pre + '.wo'] + P[pre + '.bo']


def softmax(z):
    z = z - z.max(-1, keepdims=True); e = np.exp(z); return e / e.sum(-1, keepdims=True)


def topp_count(p, threshold):
    """SPEC §2.7: sort descending (ties: lower id first), shortest prefix with cumsum > threshold."""
    order = np.argsort(-p, axis=-1, kind='stable')
    ps = np.take_along_axis(p, order, -1)
    cs = np.cumsum(ps, -1, dtype=np.float32)
    crossed = cs > threshold
    cnt = np.where(crossed.any(-1), crossed.argmax(-1) + 1, (p > 0).sum(-1))
    return cnt


def entropy(p):
    with np.errstate(divide='ignore', invalid='ignore'):
        return -(np.where(p > 0, p * np.log(p), 0)).sum(-1)


KEYS = ['n_true', 'n_noctx', 'n_ctxonly', 'n_rescaled', 'H_true', 'H_noctx', 'H_ctxonly', 'H_rescaled',
        'zspread_true', 'zspread_noctx', 'zspread_ctxonly', 'zspread_rescaled', 'pmax_true', 'pmax_noctx',
        'g', 'nh', 'nc', 'nht', 'cos_hc']


def route_stats(acc, P, pre, h, c, logq, allowed, thr):
    """Routing of one sentence's rows h [n, d] with contexts c [n, d] in MoE layer `pre`; returns the
    trained routing's (p, selected count) for the combine."""
    d = h.shape[1]
    W = P[pre + '.router.w']

    def route(ht):
        z = ht @ W
        if logq is not None: z = z + logq
        if allowed is not None: z = np.where(allowed, z, -np.inf)
        p = softmax(z)
        zc = np.where(np.isfinite(z), z, np.nan)
        return p, np.nanstd(zc, -1)

    if pre + '.gate.w' in P:
        Wg = P[pre + '.gate.w']
        g = 1 / (1 + np.exp(-(h @ Wg[:d] + c @ Wg[d:] + P[pre + '.gate.b'])))
        ht = g * h + (1 - g) * c
        acc['g'] += list(g.mean(-1)); acc['nht'] += list(np.linalg.norm(ht, axis=-1))
    else:
        ht = h
    nh = np.linalg.norm(h, axis=-1); nc = np.linalg.norm(c, axis=-1)
    acc['nh'] += list(nh); acc['nc'] += list(nc)
    acc['cos_hc'] += list((h * c).sum(-1) / (nh * nc + 1e-12))
    # h~ scaled to the norm of h, row by row: the trained mix's direction at h's length
    rescaled = ht * (nh / np.linalg.norm(ht, axis=-1))[:, None]
    out = None
    for name, inp in [('true', ht), ('noctx', h), ('ctxonly', c), ('rescaled', rescaled)]:
        p, zs = route(inp)
        n = topp_count(p, np.float32(thr))
        acc['n_' + name] += list(n); acc['H_' + name] += list(entropy(p)); acc['zspread_' + name] += list(zs)
        if name in ('true', 'noctx'): acc['pmax_' + name] += list(p.max(-1))
        if name == 'true': out = (p, n)
    return out


def topp_combine(P, experts, pre_index, h, p, thr):
    """y = Σ_{e ∈ S_t} p_e E_e(h_t) (raw top-p weights, SPEC §2.7–8), relu experts."""
    y = np.zeros_like(h)
    order = np.argsort(-p, axis=-1, kind='stable')
    cs = np.cumsum(np.take_along_axis(p, order, -1), -1, dtype=np.float32)
    for t in range(h.shape[0]):
        n = int(np.argmax(cs[t] > thr)) + 1 if (cs[t] > thr).any() else int((p[t] > 0).sum())
        for e in sorted(order[t, :n]):
            X = experts[(pre_index, int(e))]
            y[t] += p[t, e] * (np.maximum(h[t] @ X['w1'] + X['b1'], 0) @ X['w2'] + X['b2'])
    return y


def analyse(corpus, ckpt, every=1, decoder=False):
    P, meta = load_safetensors(ckpt + '/coordinator.safetensors')
    cfg = json.load(open(ckpt + '/config.json'))
    tasks = json.loads(meta['state'])['tasks']
    bpe = BPE(ckpt + '/tokenizer.json')
    m = cfg['model']; d = m['model_dim']; heads = m['heads']; thr = np.float32(cfg['routing']['threshold'])
    assert m['activation'] == 'relu' and cfg['routing']['variant'] in ('thor-topp', 'topp', 'no-context', 'no-task-level')
    E = P['embedding.weight']
    pos = np.zeros((m['max_positions'], d), np.float32)
    for p_ in range(m['max_positions']):
        for i in range(d // 2):
            a = p_ / 10000.0 ** (2 * i / d)
            pos[p_, i] = np.sin(a); pos[p_, d // 2 + i] = np.cos(a)
    has_task = 'task_level.predictor.w' in P
    K = cfg['routing'].get('k') or cfg['routing']['experts'] // 2
    experts = {}
    if decoder:
        import glob, re
        for f in glob.glob(ckpt + '/experts/*.safetensors'):
            X, _ = load_safetensors(f)
            for k, v in X.items():
                mm = re.match(r'moe\.(\d+)\.experts\.(\d+)\.(\w+)$', k)
                experts.setdefault((int(mm.group(1)), int(mm.group(2))), {})[mm.group(3)] = v
    moe_names = [f'{side}.layers.{i}.moe' for side, n in (('encoder', m['encoder_layers']), ('decoder', m['decoder_layers']))
                 for i in range(n) if f'{side}.layers.{i}.moe.router.w' in P]
    accs = {pre: {k: [] for k in KEYS} for pre in moe_names}
    correct = total = 0
    emb = lambda ids: E[ids] * np.float32(np.sqrt(d)) + pos[:len(ids)]
    ffn = lambda h, L: np.maximum(h @ P[L + '.ffn.w1'] + P[L + '.ffn.b1'], 0) @ P[L + '.ffn.w2'] + P[L + '.ffn.b2']
    for lineno, line in enumerate(open(corpus, encoding='utf-8')):
        if lineno % every: continue
        task, src, tgt = line.rstrip('\n').split('\t')
        ids = [CLS] + bpe.encode(src) + [EOS]
        tin = [BOS] + bpe.encode(tgt)
        if len(ids) > m['max_positions'] or len(tin) > m['max_positions']: continue
        x = emb(ids)
        logq = {}; allowed = {}
        for i in range(m['encoder_layers']):
            L = f'encoder.layers.{i}'
            x = x + attention(layer_norm(x, P[L + '.self_attn_norm.weight'], P[L + '.self_attn_norm.bias']), P, L + '.self_attn', heads)
            h = layer_norm(x, P[L + '.ffn_norm.weight'], P[L + '.ffn_norm.bias'])
            pre = L + '.moe'
            if pre not in moe_names:
                x = x + ffn(h, L); continue
            if has_task and not logq:  # the task level reads the first MoE sub-block's input
                pt = softmax(h.max(0) @ P['task_level.predictor.w'] + P['task_level.predictor.b'])
                correct += int(tasks[int(pt.argmax())] == task); total += 1
                r = pt @ P['task_level.embeddings']
                for name in moe_names:
                    lq = np.log(softmax(r @ P[name + '.task_router.w']))
                    a = np.zeros(lq.shape, dtype=bool); a[np.argsort(-np.exp(lq), kind='stable')[:K]] = True
                    logq[name] = lq; allowed[name] = a
            c = np.repeat(h.mean(0, keepdims=True), len(ids), 0)
            p, _ = route_stats(accs[pre], P, pre, h, c, logq.get(pre), allowed.get(pre), thr)
            if not decoder: break
            x = x + topp_combine(P, experts, moe_names.index(pre), h, p, thr)
        if not decoder: continue
        enc = layer_norm(x, P['encoder.norm.weight'], P['encoder.norm.bias'])
        y = emb(tin); n = len(tin)
        causal = np.triu(np.full((n, n), -np.inf, np.float32), 1)
        for i in range(m['decoder_layers']):
            L = f'decoder.layers.{i}'
            y = y + attention(layer_norm(y, P[L + '.self_attn_norm.weight'], P[L + '.self_attn_norm.bias']), P, L + '.self_attn', heads, causal)
            y = y + attention(layer_norm(y, P[L + '.cross_attn_norm.weight'], P[L + '.cross_attn_norm.bias']), P, L + '.cross_attn', heads, None, enc)
            h = layer_norm(y, P[L + '.ffn_norm.weight'], P[L + '.ffn_norm.bias'])
            pre = L + '.moe'
            if pre not in moe_names:
                y = y + ffn(h, L); continue
            c = np.cumsum(h, 0) / np.arange(1, n + 1, dtype=np.float32)[:, None]
            p, _ = route_stats(accs[pre], P, pre, h, c, logq.get(pre), allowed.get(pre), thr)
            y = y + topp_combine(P, experts, moe_names.index(pre), h, p, thr)
    out = {'variant': cfg['routing']['variant'], 'seed': cfg['training']['seed']}
    if total: out['task_accuracy'] = correct / total
    for pre, acc in accs.items():
        if not acc['nh']: continue
        o = {k: float(np.mean(v)) for k, v in acc.items() if v}
        if acc['g']: o['g_p10_p50_p90'] = [float(x) for x in np.percentile(acc['g'], [10, 50, 90])]
        out[pre] = o
    return out


if __name__ == '__main__':
    args = sys.argv[1:]; every = 1; decoder = False
    while args[0].startswith('--'):
        if args[0] == '--every': every = int(args[1]); args = args[2:]
        elif args[0] == '--decoder': decoder = True; args = args[1:]
        else: sys.exit(__doc__)
    corpus = args[0]
    for ck in args[1:]:
        print(json.dumps({'checkpoint': ck, 'every': every, **analyse(corpus, ck, every, decoder)}), flush=True)
