#!/usr/bin/env python3
"""Eager PyTorch reference for `thor bench train`: one whole THOR top-p training step
(forward, backward, global-norm clip, Adam) at its shape: pre-LayerNorm encoder-decoder
Transformer, d = 256, 4 heads, d_ff = 1024, 3 + 3 layers, a THOR top-p MoE layer (8 relu
experts, K = 4, p = 0.5) in every layer, vocabulary 8000 (source, target and output embeddings
tied, scaled by √d, sinusoidal positions), dropout 0.1 (embeddings, residual branches,
attention weights; never inside experts), 32 sentences × 32 tokens each side (source
[CLS] s_1..s_30 </s>, target BOS y_1..y_30 </s>: 32 × 31 = 992 target tokens per step, what
thor counts), 4 tasks (sentence i of task i mod 4).

Loss: label-smoothed (ε = 0.1) cross-entropy + α L_task + the MoE layers' β L_task_lb +
γ L_tok_lb + δ L_dyn (mean over the 6 MoE layers). Task predictor on the input of the first
encoder MoE sub-block; decoder MoE layers use the causal prefix-mean context. Adam
(β = 0.9, 0.98, ε = 1e-8), clip_grad_norm_ 1.0, inverse-square-root schedule (peak 1e-4,
100 warm-up steps), as thor bench train configures it.

One warm-up step, then --repeats timed steps: best and median ms per step, target tokens/s.
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import thor_torch as tt  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

PAD, BOS, EOS, CLS = 0, 1, 2, 3


class Attention(nn.Module):
    """Multi-head attention with F.scaled_dot_product_attention (dropout on the weights)."""

    def __init__(self, d, heads, dropout, cross=False):
        super().__init__()
        self.d, self.heads, self.dropout, self.cross = d, heads, dropout, cross
        if cross:
            self.q, self.kv = nn.Linear(d, d), nn.Linear(d, 2 * d)
        else:
            self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x, memory=None, mask=None):
        b, lq, d = x.shape
        h, dh = self.heads, d // self.heads
        if self.cross:
            q = self.q(x)
            k, v = self.kv(memory).split(d, dim=2)
        else:
            q, k, v = self.qkv(x).split(d, dim=2)
        lk = k.shape[1]
        q, k, v = (t.view(b, -1, h, dh).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        assert o.shape[2] == lq and k.shape[2] == lk
        return self.out(o.transpose(1, 2).reshape(b, lq, d))


class EncoderLayer(nn.Module):
    def __init__(self, d, heads, f, experts, dropout, moe_layers):
        super().__init__()
        self.attn_norm, self.ffn_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, dropout)
        self.moe = tt.MoELayer(d, f, experts, "thor-topp", side="encoder", loss_scale=1 / moe_layers)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask, attn_mask, r, task_level=None, labels=None):
        b, length, d = x.shape
        x = x + self.drop(self.attn(self.attn_norm(x), mask=attn_mask))
        h = self.ffn_norm(x).reshape(b * length, d)
        l_task = None
        if task_level is not None:                      # the first encoder MoE sub-block's input
            r, l_task = task_level(h, mask, b, length, labels)
        y, aux, sel = self.moe(h, mask, b, length, r)
        return x + self.drop(y.view(b, length, d)), aux, r, l_task, sel


class DecoderLayer(nn.Module):
    def __init__(self, d, heads, f, experts, dropout, moe_layers):
        super().__init__()
        self.self_norm, self.cross_norm, self.ffn_norm = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn = Attention(d, heads, dropout)
        self.cross_attn = Attention(d, heads, dropout, cross=True)
        self.moe = tt.MoELayer(d, f, experts, "thor-topp", side="decoder", loss_scale=1 / moe_layers)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory, mask, self_mask, cross_mask, r):
        b, length, d = x.shape
        x = x + self.drop(self.self_attn(self.self_norm(x), mask=self_mask))
        x = x + self.drop(self.cross_attn(self.cross_norm(x), memory=memory, mask=cross_mask))
        y, aux, sel = self.moe(self.ffn_norm(x).reshape(b * length, d), mask, b, length, r)
        return x + self.drop(y.view(b, length, d)), aux, sel


class ThorTransformer(nn.Module):
    def __init__(self, vocab=8000, d=256, heads=4, f=1024, layers=(3, 3), experts=8, tasks=4, dropout=0.1, max_positions=64):
        super().__init__()
        self.d = d
        self.embedding = nn.Embedding(vocab, d, padding_idx=PAD)
        nn.init.normal_(self.embedding.weight, std=d ** -0.5)
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()
        pos = torch.arange(max_positions).float()[:, None]
        freq = torch.pow(10000.0, -torch.arange(0, d, 2).float() / d)[None, :]
        self.register_buffer("positions", torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1))
        moe_layers = layers[0] + layers[1]
        self.encoder = nn.ModuleList(EncoderLayer(d, heads, f, experts, dropout, moe_layers) for _ in range(layers[0]))
        self.decoder = nn.ModuleList(DecoderLayer(d, heads, f, experts, dropout, moe_layers) for _ in range(layers[1]))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.task_level = tt.TaskLevel(d, tasks)
        self.drop = nn.Dropout(dropout)

    def embed(self, ids):
        return self.drop(self.embedding(ids) * math.sqrt(self.d) + self.positions[: ids.shape[1]])

    def forward(self, source, target_in, target_out, labels):
        """→ total loss, L_mt, selections of every MoE layer."""
        b, s = source.shape
        t = target_in.shape[1]
        src_mask, tgt_mask = source != PAD, target_in != PAD
        enc_attn = src_mask[:, None, None, :]                                        # [B, 1, 1, S]
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        dec_attn = causal[None, None] & tgt_mask[:, None, None, :]                  # [B, 1, T, T]
        aux_total, sels, r, l_task = 0.0, [], None, None
        x = self.embed(source)
        for i, layer in enumerate(self.encoder):
            x, aux, r, lt, sel = layer(x, src_mask.reshape(-1), enc_attn, r,
                                       task_level=self.task_level if i == 0 else None, labels=labels)
            l_task = lt if lt is not None else l_task
            aux_total, sels = aux_total + aux, sels + [sel]
        memory = self.encoder_norm(x)
        y = self.embed(target_in)
        for layer in self.decoder:
            y, aux, sel = layer(y, memory, tgt_mask.reshape(-1), dec_attn, enc_attn, r)
            aux_total, sels = aux_total + aux, sels + [sel]
        logits = F.linear(self.decoder_norm(y), self.embedding.weight)               # tied output
        l_mt = F.cross_entropy(logits.reshape(b * t, -1), target_out.reshape(-1), ignore_index=PAD, label_smoothing=0.1)
        return l_mt + tt.ALPHA * l_task + aux_total, l_mt, sels


def make_batch(sentences, length, vocab, tasks, seed=3):
    g = torch.Generator().manual_seed(seed)
    body = lambda: torch.randint(4, vocab, (sentences, length - 2), generator=g)  # noqa: E731
    source = torch.cat([torch.full((sentences, 1), CLS), body(), torch.full((sentences, 1), EOS)], dim=1)
    target = torch.cat([torch.full((sentences, 1), BOS), body(), torch.full((sentences, 1), EOS)], dim=1)
    return source, target[:, :-1], target[:, 1:], torch.arange(sentences) % tasks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tt.add_common_arguments(ap)
    ap.add_argument("--sentences", type=int, default=32)
    ap.add_argument("--length", type=int, default=32, help="tokens per sentence, each side (≥ 3)")
    ap.add_argument("--adam", choices=["default", "foreach", "fused"], default="default",
                    help="torch.optim.Adam implementation (default: PyTorch's choice on CPU, the per-tensor loop)")
    args = ap.parse_args()
    tt.setup_process(args)
    if args.sentences < 1 or args.length < 3:
        sys.exit(f"--sentences must be ≥ 1 and --length ≥ 3, got {args.sentences} and {args.length}")
    if args.check:
        check(args)
        return

    torch.manual_seed(1)
    model = ThorTransformer()
    model.train()
    kw = {} if args.adam == "default" else {args.adam: True}
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-8, **kw)
    source, target_in, target_out, labels = make_batch(args.sentences, args.length, 8000, 4)
    target_tokens = int((target_out != PAD).sum())
    all_tokens = target_tokens + int((source != PAD).sum())
    forward = torch.compile(model) if args.compile else model

    def step(n):
        opt.zero_grad(set_to_none=True)
        loss, _, sels = forward(source, target_in, target_out, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        lr = 1e-4 * min(n / 100, (100 / n) ** 0.5)                # inverse square root, 100 warm-up steps
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        return float(loss.detach()), sels

    times, losses, sels = [], [], None
    for n in range(1, args.repeats + 2):                          # step 1 warms up
        t0 = time.perf_counter()
        loss, sels = step(n)
        t = time.perf_counter() - t0
        losses.append(loss)
        if n > 1:
            times.append(t)
    best, med = min(times), tt.median(times)
    per_token = sum(float(s.sum()) for s in sels) / len(sels)
    enc = sum(float(s.sum()) for s in sels[:3]) / 3 / int((source != PAD).sum())
    dec = sum(float(s.sum()) for s in sels[3:]) / 3 / target_tokens
    fields = {"ms_per_step": round(best * 1000, 1), "ms_per_step_median": round(med * 1000, 1),
              "ms_all": [round(t * 1000, 1) for t in times],
              "target_tokens_per_s": round(target_tokens / best, 1),
              "target_tokens_per_s_median": round(target_tokens / med, 1),
              "tokens_per_s": round(all_tokens / best, 1), "target_tokens_per_step": target_tokens,
              "experts_per_token": round((enc + dec) / 2, 3), "assignments_per_step": round(per_token * len(sels)),
              "losses": [round(v, 4) for v in losses], "adam": args.adam,
              "parameters": sum(p.numel() for p in model.parameters())}
    fields.update(tt.environment_fields(args))
    if args.json:
        print(json.dumps(fields, sort_keys=True))
    else:
        tt.print_table(f"eager PyTorch THOR top-p training step: d=256 h=4 d_ff=1024 3+3 layers MoE every layer N=8 V=8000, "
                       f"{args.sentences}x{args.length} tokens each side, dropout 0.1; best of {args.repeats} steps",
                       ["ms", "ms median", "target tokens/s", "tokens/s"],
                       [("step", {"ms": f"{best * 1000:.1f}", "ms median": f"{med * 1000:.1f}",
                                  "target tokens/s": f"{target_tokens / best:.0f}", "tokens/s": f"{all_tokens / best:.0f}"})],
                       {k: v for k, v in fields.items() if k != "ms_all"})


def check(args):
    """The MoE layer checks (encoder and decoder sides), then the whole model: float64 on a tiny
    shape, the decoder's causal masking (a later target token changes no earlier position's
    loss term) and finite differences of the whole loss (dropout off, selections held) along
    a random direction of every parameter; then 20 steps of training on one batch must cut L_mt."""
    tt.run_checks()
    torch.manual_seed(0)
    model = ThorTransformer(vocab=50, d=8, heads=2, f=12, layers=(2, 2), experts=8, tasks=4, dropout=0.0, max_positions=16).double()
    model.eval()
    source, target_in, target_out, labels = make_batch(4, 6, 50, 4, seed=5)
    source[1, -2:] = PAD                                          # padding on both sides
    target_in[2, -2:] = PAD
    target_out[2, -2:] = PAD
    loss, _, _ = model(source, target_in, target_out, labels)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)     # an expert no token chose has none
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    direction = [torch.randn_like(p) for p in params]
    analytic = sum(float((g * v).sum()) for g, v in zip(grads, direction))
    eps = 1e-6
    with torch.no_grad():
        for p, v in zip(params, direction):
            p.add_(eps * v)
        up = float(model(source, target_in, target_out, labels)[0])
        for p, v in zip(params, direction):
            p.sub_(2 * eps * v)
        down = float(model(source, target_in, target_out, labels)[0])
        for p, v in zip(params, direction):
            p.add_(eps * v)
    numeric = (up - down) / (2 * eps)
    assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), f"whole-model gradient: {analytic} vs finite differences {numeric}"
    print(f"check model: directional derivative {analytic:.8f} = finite differences {numeric:.8f} (float64, padding on both sides)")

    # Causality: changing the last target input token changes no logit of earlier positions.
    def mt_terms(tin):
        """L_mt of each target position alone."""
        with torch.no_grad():
            loss_each = []
            for pos in range(tin.shape[1]):
                mask_out = torch.full_like(target_out, PAD)
                mask_out[:, pos] = target_out[:, pos]
                loss_each.append(float(model(source, tin, mask_out, labels)[1]) if bool((mask_out != PAD).any()) else 0.0)
            return loss_each
    changed = target_in.clone()
    changed[:, -1] = (changed[:, -1] + 7) % 46 + 4
    a, b = mt_terms(target_in), mt_terms(changed)
    assert all(abs(x - y) < 1e-12 for x, y in zip(a[:-1], b[:-1])), "a later target token changed an earlier position's loss"
    assert abs(a[-1] - b[-1]) > 1e-9, "the last position's loss did not see its own input"
    print("check model: decoder is causal (attention and prefix-mean context), the last position sees its input")

    torch.manual_seed(1)
    model = ThorTransformer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-8)
    source, target_in, target_out, labels = make_batch(args.sentences, args.length, 8000, 4)
    first = last = None
    for n in range(20):
        opt.zero_grad(set_to_none=True)
        loss, l_mt, _ = model(source, target_in, target_out, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        first = float(l_mt.detach()) if first is None else first
        last = float(l_mt.detach())
    assert last < first - 0.5, f"20 steps on one batch moved L_mt from {first:.3f} to {last:.3f} only"
    print(f"check training: 20 Adam steps on one batch (lr 1e-3): L_mt {first:.3f} → {last:.3f}; "
          f"target tokens per step {int((target_out != PAD).sum())}")


if __name__ == "__main__":
    main()
