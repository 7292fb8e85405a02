"""Eager PyTorch THOR-MoE pieces shared by moe_layer.py and train_step.py.

The formulas are ../../../shared/SPEC.md §2–3 (the project's reference), written the way a
PyTorch user writes an MoE layer: routing as batched tensor ops, then per expert
index_select → FFN (nn.Linear, relu, nn.Linear) → index_add_ (fairseq's / Tutel's eager
path), autograd for every gradient. fp32 unless a check asks for float64.
"""
import math
import os
import platform
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# SPEC §3 defaults (thor's LossConfiguration): α, β, γ, δ.
ALPHA, BETA, GAMMA, DELTA = 1e-2, 1e-2, 1e-2, 1e-4

HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------------------------
# Process setup shared by the scripts: threads, and MKL's code path on non-Intel CPUs.
# --------------------------------------------------------------------------------------------

def add_common_arguments(parser):
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2, as thor's benches)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repetitions after one warm-up round (best and median reported; default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--mkl-avx512", action="store_true",
                        help="preload mkl_intel_path.c (built with cc on first use) so that the MKL linked into "
                             "PyTorch takes its AVX-512 code path on a non-Intel CPU (see README.md)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (default: eager, as issue 11 measured)")
    parser.add_argument("--check", action="store_true",
                        help="check the implementation against a slow per-token reference and exit")


def shim_path():
    return os.path.join(HERE, "build", "libmkl_intel_path.so")


def build_shim():
    """Compiles mkl_intel_path.c into build/ (once); returns the library's path."""
    out = shim_path()
    src = os.path.join(HERE, "mkl_intel_path.c")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cc = os.environ.get("CC", "cc")
        try:
            subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", out, src], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"--mkl-avx512: could not build {out} with {cc}: {e}")
    return out


def setup_process(args):
    """Re-executes with the MKL shim preloaded when asked (LD_PRELOAD must be set at start);
    sets the thread count. Call first thing in main()."""
    if args.threads < 1:
        sys.exit(f"--threads must be ≥ 1, got {args.threads}")
    if args.repeats < 1:
        sys.exit(f"--repeats must be ≥ 1, got {args.repeats}")
    preload = os.environ.get("LD_PRELOAD", "")
    if args.mkl_avx512 and shim_path() not in preload.split(":"):
        lib = build_shim()
        env = dict(os.environ, LD_PRELOAD=":".join(p for p in [lib, preload] if p))
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    if not args.mkl_avx512 and shim_path() in preload.split(":"):
        sys.exit("LD_PRELOAD holds the MKL shim but --mkl-avx512 was not given; unset LD_PRELOAD")
    torch.set_num_threads(args.threads)


def environment_fields(args):
    """What a reader needs to judge a figure: versions, threads, MKL path, OpenMP policy, load."""
    return {
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkl_avx512_forced": bool(args.mkl_avx512),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "compiled": bool(args.compile),
        "cpu": platform.processor() or platform.machine(),
        "load_average": round(os.getloadavg()[0], 2),
    }


def expert_gemm_seconds(n, d, f, dtype=torch.float32):
    """The six GEMMs of an FFN forward + backward at [n × d]·[d × f] (thor bench moe's
    gemm_gflops_2t with torch.mm): returns a function that times one run."""
    g = torch.Generator().manual_seed(11)
    x, w1, w2 = (torch.randn(s, generator=g, dtype=dtype) * 0.05 for s in ((n, d), (d, f), (f, d)))
    h, y, dy = torch.empty(n, f, dtype=dtype), torch.empty(n, d, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)
    dw1, dw2, dx = torch.zeros(d, f, dtype=dtype), torch.zeros(f, d, dtype=dtype), torch.empty(n, d, dtype=dtype)

    def run():
        t0 = time.perf_counter()
        torch.mm(x, w1, out=h)
        torch.mm(h, w2, out=y)
        dw2.addmm_(h.t(), dy)
        torch.mm(dy, w2.t(), out=h)
        dw1.addmm_(x.t(), h)
        torch.mm(h, w1.t(), out=dx)
        return time.perf_counter() - t0

    return run, 6 * 2 * n * d * f


def median(xs):
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else 0.5 * (s[m - 1] + s[m])


def print_table(title, columns, rows, fields):
    """rows: list of (label, {column: text}); fields: dict printed after the table."""
    header = [""] + columns
    lines = [header] + [[label] + [cells.get(c, "") for c in columns] for label, cells in rows]
    widths = [max(len(l[i]) for l in lines) for i in range(len(header))]
    lines.insert(1, ["-" * w for w in widths])
    print(title)
    for l in lines:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(l, widths))))
    for k, v in fields.items():
        print(f"{k}: {v}")


# --------------------------------------------------------------------------------------------
# The model pieces.
# --------------------------------------------------------------------------------------------

def xavier_uniform_(t, fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        t.uniform_(-limit, limit)
    return t


class Expert(nn.Module):
    """An FFN expert W2 · relu(W1 · x + b1) + b2 (SPEC §1), thor's initialization (Xavier, zero biases)."""

    def __init__(self, d, f):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)
        xavier_uniform_(self.fc1.weight, d, f)
        xavier_uniform_(self.fc2.weight, f, d)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class TaskLevel(nn.Module):
    """SPEC §2.1–2.2: u = maxpool over non-pad positions, P_task = softmax(W_t u + b_t),
    r = Σ_τ P_task[τ] E_task[τ]; L_task = CE(P_task, gold), mean over sentences."""

    def __init__(self, d, tasks):
        super().__init__()
        self.predictor = nn.Linear(d, tasks)
        xavier_uniform_(self.predictor.weight, d, tasks)
        nn.init.zeros_(self.predictor.bias)
        self.embeddings = nn.Parameter(torch.randn(tasks, d) / math.sqrt(d))

    def forward(self, h, mask, batch, length, labels):
        """h [B·L, d], mask [B·L] bool, labels [B] long → r [B, d], L_task."""
        d = h.shape[1]
        pooled = h.view(batch, length, d).masked_fill(~mask.view(batch, length, 1), float("-inf")).amax(dim=1)
        logits = self.predictor(pooled)
        r = torch.softmax(logits, dim=1) @ self.embeddings
        return r, F.cross_entropy(logits, labels)


def top_p_selection(p, threshold, allowed):
    """SPEC §2.7 top-p: sort descending (ties: lower id first), keep the shortest prefix whose
    cumulative sum is strictly greater than `threshold` (the crossing expert included; all
    candidates if it never crosses); never outside `allowed`. p [n, N] (detached) → bool [n, N]."""
    ps, order = p.sort(dim=1, descending=True, stable=True)
    before = torch.cat([torch.zeros_like(ps[:, :1]), ps.cumsum(dim=1)[:, :-1]], dim=1)
    keep = before <= threshold
    return torch.zeros_like(keep).scatter_(1, order, keep) & allowed


class MoELayer(nn.Module):
    """One MoE FFN sub-block. variant 'top2' (GShard: token router on h over all experts,
    top-2, renormalized weights, L_tok_lb) or 'thor-topp' (task router q = softmax(W_task r),
    candidates C = TopK(q, K), context c (encoder: sentence mean; decoder: causal prefix mean),
    gate g = σ(W_g [h; c] + b_g), h̃ = g ⊙ h + (1 − g) ⊙ c, z = W_r h̃ + log q over C, p =
    softmax(z), top-p with raw weights; L_task_lb, L_tok_lb, L_dyn). Experts see h."""

    def __init__(self, d, f, experts, variant, side="encoder", candidates=None, threshold=0.5, loss_scale=1.0):
        super().__init__()
        if variant not in ("top2", "thor-topp"):
            raise ValueError(f"variant must be top2 or thor-topp, got {variant!r}")
        if side not in ("encoder", "decoder"):
            raise ValueError(f"side must be encoder or decoder, got {side!r}")
        self.d, self.n, self.variant, self.side = d, experts, variant, side
        self.k = candidates or experts // 2
        self.threshold, self.loss_scale = threshold, loss_scale
        self.experts = nn.ModuleList(Expert(d, f) for _ in range(experts))
        if variant == "thor-topp":
            self.task_router = nn.Linear(d, experts, bias=False)
            xavier_uniform_(self.task_router.weight, d, experts)
            # W_g [h; c] + b_g = W_gh h + (W_gc c + b_g): the c part once per context row.
            self.gate_h, self.gate_c = nn.Linear(d, d, bias=False), nn.Linear(d, d)
            for w in (self.gate_h.weight, self.gate_c.weight):
                xavier_uniform_(w, 2 * d, d)
            nn.init.zeros_(self.gate_c.bias)
        self.router = nn.Linear(d, experts, bias=False)
        xavier_uniform_(self.router.weight, d, experts)

    def route(self, h, mask, batch, length, r):
        """→ p [n, N], combine weights w [n, N] (0 where not selected), selection [n, N] bool,
        the weighted auxiliary loss of this layer (scalar)."""
        n_rows, d, n = h.shape[0], self.d, self.n
        maskf = mask.to(h.dtype)
        tokens = maskf.sum().clamp_min(1)
        aux = h.new_zeros(())
        if self.variant == "top2":
            p = torch.softmax(self.router(h), dim=1) * maskf[:, None]
            top, idx = p.topk(2, dim=1)
            w = torch.zeros_like(p).scatter(1, idx, top / top.sum(dim=1, keepdim=True).clamp_min(1e-30))
            sel = torch.zeros_like(p, dtype=torch.bool).scatter_(1, idx, True) & mask[:, None]
        else:
            log_q = torch.log_softmax(self.task_router(r), dim=1)                  # [B, N]
            q = log_q.exp()
            cand = q.detach().topk(self.k, dim=1).indices                          # [B, K]
            allowed = torch.zeros_like(q, dtype=torch.bool).scatter_(1, cand, True)
            hb, mb = h.view(batch, length, d), maskf.view(batch, length, 1)
            if self.side == "encoder":
                c = ((hb * mb).sum(dim=1) / mb.sum(dim=1).clamp_min(1)).unsqueeze(1)   # [B, 1, d]
            else:
                c = (hb * mb).cumsum(dim=1) / mb.cumsum(dim=1).clamp_min(1)           # [B, L, d]
            g = torch.sigmoid(self.gate_h(hb) + self.gate_c(c))
            ht = g * hb + (1 - g) * c
            z = (self.router(ht) + log_q[:, None, :]).masked_fill(~allowed[:, None, :], float("-inf"))
            p = torch.softmax(z, dim=2).reshape(n_rows, n) * maskf[:, None]
            rows_allowed = allowed.repeat_interleave(length, dim=0)
            sel = top_p_selection(p.detach(), self.threshold, rows_allowed) & mask[:, None]
            w = p * sel
            # L_task_lb = N Σ f_e P_e, f_e = share of candidate slots, P_e = mean q
            f_task = allowed.to(h.dtype).sum(dim=0) / (batch * self.k)
            aux = aux + BETA * n * (f_task * q.mean(dim=0)).sum()
            # L_dyn = mean token entropy (0 log 0 = 0)
            ent = -(p * p.clamp_min(1e-30).log()).sum(dim=1)
            aux = aux + DELTA * (ent * maskf).sum() / tokens
        # L_tok_lb = N Σ f_e P_e, f_e = share of assignments, P_e = mean p over non-pad tokens
        counts = sel.to(h.dtype).sum(dim=0)
        f_tok = counts / counts.sum().clamp_min(1)
        aux = aux + GAMMA * n * (f_tok * p.sum(dim=0) / tokens).sum()
        return p, w, sel, self.loss_scale * aux

    def forward(self, h, mask, batch, length, r=None):
        """h [B·L, d], mask [B·L] bool, r [B, d] (thor-topp) → y [B·L, d], aux loss, selection."""
        _, w, sel, aux = self.route(h, mask, batch, length, r)
        y = torch.zeros_like(h)
        for e, expert in enumerate(self.experts):           # ascending expert id (SPEC §2.8)
            idx = sel[:, e].nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            y.index_add_(0, idx, expert(h.index_select(0, idx)) * w[idx, e].unsqueeze(1))
        return y, aux, sel


# --------------------------------------------------------------------------------------------
# The slow reference: per token, loops, the SPEC read literally (for --check).
# --------------------------------------------------------------------------------------------

def slow_moe_forward(layer, h, mask, batch, length, r=None):
    """The same layer's output and auxiliary loss computed token by token with Python loops
    (no batched routing, no index_add_). Differentiable through autograd like the fast one."""
    d, n = layer.d, layer.n
    rows = []
    tokens = int(mask.sum())
    probs, sels = [], []
    aux = h.new_zeros(())
    if layer.variant == "thor-topp":
        qs, cands = [], []
        for b in range(batch):
            logits = torch.stack([(layer.task_router.weight[e] * r[b]).sum() for e in range(n)])
            m = logits.max()
            lse = m + torch.log(torch.exp(logits - m).sum())
            q = torch.exp(logits - lse)
            order = sorted(range(n), key=lambda e: (-float(q[e].detach()), e))
            qs.append((q, logits - lse))
            cands.append(set(order[: layer.k]))
    for t in range(batch * length):
        b, i = divmod(t, length)
        if not bool(mask[t]):
            rows.append(h.new_zeros(d))
            probs.append(h.new_zeros(n))
            sels.append(set())
            continue
        x = h[t]
        if layer.variant == "top2":
            z = torch.stack([(layer.router.weight[e] * x).sum() for e in range(n)])
            p = torch.softmax(z, dim=0)
            order = sorted(range(n), key=lambda e: (-float(p[e].detach()), e))
            chosen = order[:2]
            weights = {e: p[e] / (p[chosen[0]] + p[chosen[1]]) for e in chosen}
        else:
            span = range(b * length, b * length + length) if layer.side == "encoder" else range(b * length, t + 1)
            real = [s for s in span if bool(mask[s])]
            c = sum(h[s] for s in real) / len(real)
            g = torch.sigmoid(layer.gate_h.weight @ x + layer.gate_c.weight @ c + layer.gate_c.bias)
            ht = g * x + (1 - g) * c
            q, log_q = qs[b]
            zs = {e: (layer.router.weight[e] * ht).sum() + log_q[e] for e in sorted(cands[b])}
            m = max(zs.values())
            denom = sum(torch.exp(v - m) for v in zs.values())
            p = torch.stack([torch.exp(zs[e] - m) / denom if e in zs else h.new_zeros(()) for e in range(n)])
            order = sorted(cands[b], key=lambda e: (-float(p[e].detach()), e))
            chosen, total = [], 0.0
            for e in order:
                chosen.append(e)
                total += float(p[e].detach())
                if total > layer.threshold:
                    break
            weights = {e: p[e] for e in chosen}
            aux = aux + DELTA * -sum(p[e] * torch.log(p[e]) for e in range(n) if float(p[e].detach()) > 0) / tokens
        y = h.new_zeros(d)
        for e in sorted(weights):
            ex = layer.experts[e]
            y = y + weights[e] * (ex.fc2.weight @ torch.relu(ex.fc1.weight @ x + ex.fc1.bias) + ex.fc2.bias)
        rows.append(y)
        probs.append(p)
        sels.append(set(weights))
    assignments = sum(len(s) for s in sels)
    for e in range(n):
        f = sum(1 for s in sels if e in s) / assignments
        aux = aux + GAMMA * n * f * sum(probs[t][e] for t in range(len(probs))) / tokens
    if layer.variant == "thor-topp":
        for e in range(n):
            f = sum(1 for cset in cands if e in cset) / (batch * layer.k)
            aux = aux + BETA * n * f * sum(qs[b][0][e] for b in range(batch)) / batch
    return torch.stack(rows), layer.loss_scale * aux, sels


def slow_task_level(level, h, mask, batch, length, labels):
    d = h.shape[1]
    rs, loss = [], h.new_zeros(())
    for b in range(batch):
        real = [h[b * length + i] for i in range(length) if bool(mask[b * length + i])]
        u = torch.stack(real).max(dim=0).values
        logits = level.predictor.weight @ u + level.predictor.bias
        p = torch.softmax(logits, dim=0)
        rs.append(sum(p[t] * level.embeddings[t] for t in range(p.shape[0])))
        loss = loss - torch.log(p[labels[b]]) / batch
    return torch.stack(rs), loss


def check_layer(variant, side, seed=0, verbose=True):
    """Tiny float64 layer (d=6, d_ff=10, N=8, K=4, 3 sentences × 5 positions, one pad position):
    output, auxiliary loss, selection and every gradient (parameters and input) of the fast
    layer against the slow per-token reference, then torch.autograd.gradcheck of the fast one.
    Returns the largest absolute difference; raises AssertionError on a mismatch."""
    torch.manual_seed(seed)
    d, f, n, batch, length, tasks = 6, 10, 8, 3, 5, 4
    layer = MoELayer(d, f, n, variant, side=side, threshold=0.5, loss_scale=0.5).double()
    level = TaskLevel(d, tasks).double()
    h = torch.randn(batch * length, d, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(batch * length, dtype=torch.bool)
    mask[length * 2 - 1] = False          # a pad position at the end of sentence 1
    labels = torch.tensor([0, 3, 1])
    dy = torch.randn(batch * length, d, dtype=torch.float64)
    params = [h] + list(layer.parameters()) + (list(level.parameters()) if variant == "thor-topp" else [])

    def run(fast):
        r, l_task = (level(h, mask, batch, length, labels) if fast else slow_task_level(level, h, mask, batch, length, labels)) \
            if variant == "thor-topp" else (None, h.new_zeros(()))
        y, aux, sel = layer(h, mask, batch, length, r) if fast else slow_moe_forward(layer, h, mask, batch, length, r)
        loss = (y * dy).sum() + aux + ALPHA * l_task
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
        sets = [set(torch.nonzero(sel[t]).flatten().tolist()) for t in range(sel.shape[0])] if fast else sel
        return y.detach(), float(aux.detach()), sets, grads

    yf, af, sf, gf = run(True)
    ys, as_, ss, gs = run(False)
    assert sf == ss, f"{variant}/{side}: selections differ: {sf} vs {ss}"
    worst = max([float((yf - ys).abs().max()), abs(af - as_)] + [float((a - b).abs().max()) for a, b in zip(gf, gs)])
    assert worst < 1e-10, f"{variant}/{side}: fast and slow differ by {worst:g}"
    per_token = sum(len(s) for s in sf) / int(mask.sum())

    # Finite differences of the fast layer (selection held fixed by small steps).
    def fn(x):
        r, l_task = level(x, mask, batch, length, labels) if variant == "thor-topp" else (None, x.new_zeros(()))
        y, aux, _ = layer(x, mask, batch, length, r)
        return (y * dy).sum() + aux + ALPHA * l_task
    assert torch.autograd.gradcheck(fn, (h,), eps=1e-7, atol=1e-6), f"{variant}/{side}: gradcheck failed"
    if verbose:
        print(f"check {variant:9s} {side:7s}: fast = slow per-token reference (max |Δ| {worst:.1e} over output, aux loss "
              f"and {len(params)} gradients), selections equal ({per_token:.2f} experts/token), gradcheck ok")
    return worst


def run_checks():
    for variant in ("top2", "thor-topp"):
        for side in ("encoder", "decoder"):
            if variant == "top2" and side == "decoder":
                continue              # top-2 routing does not depend on the side
            for seed in range(3):
                check_layer(variant, side, seed=seed, verbose=seed == 0)
    top_p_edge_cases()


def top_p_edge_cases():
    """Ties (lower id first), the crossing expert included, 'never crosses' → all candidates."""
    allowed = torch.ones(1, 4, dtype=torch.bool)
    sel = top_p_selection(torch.tensor([[0.25, 0.25, 0.25, 0.25]]), 0.5, allowed)
    assert sel.tolist() == [[True, True, True, False]], sel   # 0.25+0.25 = 0.5 is not > 0.5: third expert crosses
    sel = top_p_selection(torch.tensor([[0.1, 0.6, 0.2, 0.1]]), 0.5, allowed)
    assert sel.tolist() == [[False, True, False, False]], sel
    sel = top_p_selection(torch.tensor([[0.0, 0.5, 0.5, 0.0]]), 0.99, torch.tensor([[False, True, True, False]]))
    assert sel.tolist() == [[False, True, True, False]], sel
    print("check top-p selection: ties, the crossing expert, never crossing: ok")
