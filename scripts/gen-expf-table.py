#!/usr/bin/env python3
"""Prints the 32-entry table of Sources/CThorKernels/expf.c: tab[i] = bits(2^(i/32)) - (i << 47),
where 2^(i/32) is rounded to the nearest double with exact integer arithmetic (no floating point)."""


def nearest_double_mantissa(i):
    """round(2^52 · 2^(i/32)) as an integer in [2^52, 2^53)."""
    extra = 16  # guard bits
    target = 1 << ((52 + extra) * 32 + i)  # (2^(52+extra) · 2^(i/32))^32
    lo, hi = 0, 1 << (53 + extra + 1)
    while lo < hi:  # largest r with r^32 <= target
        mid = (lo + hi + 1) // 2
        if mid ** 32 <= target:
            lo = mid
        else:
            hi = mid - 1
    exact = lo ** 32 == target  # only for i = 0: 2^(i/32) is irrational otherwise
    m, rest = lo >> extra, lo & ((1 << extra) - 1)
    half = 1 << (extra - 1)
    if rest > half or (rest == half and not exact):
        m += 1
    elif rest == half:
        raise ValueError("tie")  # cannot happen
    return m


def table():
    out = []
    for i in range(32):
        m = nearest_double_mantissa(i)
        assert (1 << 52) <= m < (1 << 53)
        bits = (0x3FF << 52) | (m - (1 << 52))
        out.append((bits - (i << 47)) % (1 << 64))
    return out


if __name__ == "__main__":
    t = table()
    for row in range(0, 32, 4):
        print("    " + ", ".join("0x%016x" % v for v in t[row:row + 4]) + ",")
