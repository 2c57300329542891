"""Straightforward loop implementation of TensorRT's entropy calibration (Migacz, "8-bit Inference
with TensorRT", GTC 2017), the oracle for pyquant.calib.kl_divergences.

    for i in range(start, B + 1):
        P = hist[:i]; P[i-1] += sum(hist[i:])                       # reference, outliers clipped in
        Q = quantize hist[:i] into L levels (bin j -> level j*L // i), spread each level's mass evenly
            over its non-empty bins, zero for empty bins              # candidate
        KL[i] = sum_j p_j log(p_j / q_j) with p = P/sum(P), q = Q/sum(Q)  (inf if q_j = 0 < p_j)
"""

from __future__ import annotations

import math
from typing import List


def kl_divergences_loop(hist: List[float], num_levels: int, start: int) -> List[float]:
    B = len(hist)
    L = num_levels
    out = []
    for i in range(start, B + 1):
        p = [float(v) for v in hist[:i]]
        p[i - 1] += float(sum(hist[i:]))
        mass = [0.0] * L
        nonempty = [0] * L
        for j in range(i):
            level = j * L // i
            if hist[j] > 0:
                mass[level] += hist[j]
                nonempty[level] += 1
        q = [0.0] * i
        for j in range(i):
            level = j * L // i
            if hist[j] > 0:
                q[j] = mass[level] / nonempty[level]
        sp, sq = sum(p), sum(q)
        if sq == 0:
            out.append(math.inf)
            continue
        kl = 0.0
        for pj, qj in zip(p, q):
            if pj == 0:
                continue
            if qj == 0:
                kl = math.inf
                break
            kl += (pj / sp) * math.log((pj / sp) / (qj / sq))
        out.append(kl)
    return out
