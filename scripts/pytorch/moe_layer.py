#!/usr/bin/env python3
"""Eager PyTorch reference for `thor bench moe` / `thor bench distributed`: one encoder MoE
layer forward + backward at their shape (d = 512, d_ff = 2048, N = 8 relu experts, 32 × 128 =
4096 tokens, 4 tasks, sentence i of task i mod 4, x ~ N(0, 1), ∂L/∂y ~ N(0, 0.01²)).

Cases (interleaved round-robin, one warm-up round, best and median of --repeats):
  top2       GShard top-2 over all experts, renormalized weights, L_tok_lb.
  thor_topp  THOR top-p (p = 0.5, K = N/2 = 4 candidates): task predictor + mixed task
             representation (once, as thor's first MoE layer runs it), task router with
             L_task_lb, sentence-mean context, context gate, token router + log q over the
             candidates, top-p with raw weights, L_tok_lb, L_dyn.
Forward and backward include the auxiliary losses and ∂L/∂x, like thor's bench.
The six expert GEMMs at [4096 × 512]·[512 × 2048] are timed with torch.mm in the same rounds
(gemm_gflops), giving each case's GEMM bound as thor's bench defines it.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import thor_torch as tt  # noqa: E402
import torch  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tt.add_common_arguments(ap)
    ap.add_argument("--model-dim", type=int, default=512)
    ap.add_argument("--hidden-dim", type=int, default=2048)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--sentences", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.5, help="top-p threshold p (default 0.5)")
    ap.add_argument("--cases", default="top2,thor_topp", help="comma-separated: top2, thor_topp")
    args = ap.parse_args()
    tt.setup_process(args)
    if args.check:
        tt.run_checks()
        return
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in ("top2", "thor_topp"):
            sys.exit(f"--cases: unknown case {c!r} (top2, thor_topp)")
    for name in ("model_dim", "hidden_dim", "sentences", "length", "tasks"):
        if getattr(args, name) < 1:
            sys.exit(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.experts < 2:
        sys.exit(f"--experts must be ≥ 2, got {args.experts}")

    d, f, n, b, length, tasks = args.model_dim, args.hidden_dim, args.experts, args.sentences, args.length, args.tasks
    tokens = b * length
    torch.manual_seed(1)
    x = torch.randn(tokens, d)
    dy = torch.randn(tokens, d) * 0.01
    mask = torch.ones(tokens, dtype=torch.bool)
    labels = torch.arange(b) % tasks
    # thor's bench: the first encoder MoE layer of a 1 + 1 layer model: aux losses / 2 MoE layers.
    layers = {c: tt.MoELayer(d, f, n, "top2" if c == "top2" else "thor-topp", threshold=args.threshold, loss_scale=0.5)
              for c in cases}
    level = tt.TaskLevel(d, tasks)

    def step(case):
        layer = layers[case]
        xin = x.detach().requires_grad_()
        if case == "thor_topp":
            r, l_task = level(xin, mask, b, length, labels)
            y, aux, sel = layer(xin, mask, b, length, r)
            aux = aux + tt.ALPHA * l_task
        else:
            y, aux, sel = layer(xin, mask, b, length)
        torch.autograd.backward([y, aux], [dy, torch.ones_like(aux)])
        return sel, xin.grad

    runners = {c: (torch.compile(lambda c=c: step(c)) if args.compile else (lambda c=c: step(c))) for c in cases}
    gemm, gemm_flops = tt.expert_gemm_seconds(tokens, d, f)
    times = {c: [] for c in cases}
    gemm_times, last_sel = [], {}
    for rnd in range(args.repeats + 1):          # round 0 warms up
        g = gemm()
        if rnd > 0:
            gemm_times.append(g)
        for c in cases:
            t0 = time.perf_counter()
            sel, _ = runners[c]()
            t = time.perf_counter() - t0
            for p in list(layers[c].parameters()) + list(level.parameters()):
                p.grad = None                    # zero_grad(set_to_none=True), outside the timing
            last_sel[c] = sel
            if rnd > 0:
                times[c].append(t)

    gflops = gemm_flops / min(gemm_times) / 1e9
    fields = {"shape": f"d={d} d_ff={f} N={n} K={n // 2} p={args.threshold} {b}x{length}={tokens} tokens, T={tasks}",
              "gemm_gflops": round(gflops, 1)}
    rows = []
    row_flops = 3 * 2 * d * (f + f)              # forward + backward of one token through one relu expert
    top2_rate = None
    for c in cases:
        best, med = min(times[c]), tt.median(times[c])
        sel = last_sel[c]
        per_token = float(sel.sum()) / tokens
        load = sel.sum(dim=0)
        rate = tokens / best
        bound = tokens / (float(sel.sum()) * row_flops / (gflops * 1e9))
        if c == "top2":
            top2_rate = rate
        fields.update({f"{c}_tokens_per_s": round(rate, 1), f"{c}_tokens_per_s_median": round(tokens / med, 1),
                       f"{c}_ms": round(best * 1000, 2), f"{c}_ms_median": round(med * 1000, 2),
                       f"{c}_ms_all": [round(t * 1000, 2) for t in times[c]],
                       f"{c}_experts_per_token": round(per_token, 3),
                       f"{c}_busiest_expert_share": round(float(load.max()) / float(sel.sum()), 3),
                       f"{c}_gemm_bound_tokens_per_s": round(bound, 1),
                       f"{c}_over_gemm_bound": round(rate / bound, 3)})
        rows.append((c, {"ms": f"{best * 1000:.1f}", "ms median": f"{med * 1000:.1f}", "tokens/s": f"{rate:.0f}",
                         "experts/token": f"{per_token:.3f}",
                         "busiest expert": f"{100 * float(load.max()) / float(sel.sum()):.1f}%",
                         "vs top2": f"{rate / top2_rate:.3f}" if top2_rate else "",
                         "over GEMM bound": f"{rate / bound:.3f}"}))
    fields.update(tt.environment_fields(args))
    if args.json:
        print(json.dumps(dict(fields, rows=[dict(label=label, **cells) for label, cells in rows]), sort_keys=True))
    else:
        tt.print_table(f"eager PyTorch MoE layer forward+backward ({fields['shape']}), best of {args.repeats} interleaved rounds",
                       ["ms", "ms median", "tokens/s", "experts/token", "busiest expert", "vs top2", "over GEMM bound"],
                       rows, {k: v for k, v in fields.items() if k != "shape" and not k.endswith("_ms_all")})


if __name__ == "__main__":
    main()
