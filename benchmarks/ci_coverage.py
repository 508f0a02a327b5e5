"""Simulated coverage of nnaug's 95 % CIs for a Dice difference between two arms (docs/sweep.md's table).

Each experiment draws two arms on the same cases: Dice = arm mean + shared case difficulty + arm×case
effect + seed effect (independent per arm) + residual, with a known difference of +0.02. It counts how
often each interval contains +0.02. Usage: python benchmarks/ci_coverage.py [experiments per scenario]
"""
from __future__ import annotations

import sys

import numpy as np

from nnaug.stats import bootstrap_difference, difference_ci, t_interval

# name: (seeds, cases, seed sd, case sd, arm×case sd, residual sd)
SCENARIOS = {
    "Kvasir-like, 3 seeds x 40 cases": (3, 40, 0.008, 0.10, 0.04, 0.06),
    "Kvasir-like, 3 seeds x 100 cases": (3, 100, 0.008, 0.10, 0.04, 0.06),
    "Kvasir-like, 3 seeds x 200 cases": (3, 200, 0.008, 0.10, 0.04, 0.06),
    "2.5x Kvasir's seed sd, 3 seeds x 100 cases": (3, 100, 0.02, 0.10, 0.04, 0.06),
    "seed-dominated, 2 seeds x 200 cases": (2, 200, 0.03, 0.10, 0.02, 0.05),
    "seed-dominated, 3 seeds x 200 cases": (3, 200, 0.03, 0.10, 0.02, 0.05),
    "seed-dominated, 5 seeds x 200 cases": (5, 200, 0.03, 0.10, 0.02, 0.05),
    "seed-dominated, 10 seeds x 200 cases": (10, 200, 0.03, 0.10, 0.02, 0.05),
    "no seed noise, 3 seeds x 40 cases": (3, 40, 0.0, 0.10, 0.08, 0.03),
}
DELTA = 0.02


def experiment(rng, seeds, cases, seed_sd, case_sd, arm_case_sd, residual_sd):
    shared = rng.normal(0.0, case_sd, cases)

    def arm(mean):
        return (mean + shared + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, arm_case_sd, cases)
                + rng.normal(0, residual_sd, (seeds, cases)))

    return arm(0.7 + DELTA), arm(0.7)


def main(n: int = 1000) -> None:
    print("| scenario | seed sd of an arm's mean | bootstrap alone | t-interval alone | nnaug (wider of both) | "
          "median width |")
    print("|---|---|---|---|---|---|")
    for name, params in SCENARIOS.items():
        rng = np.random.default_rng(2026)
        hits = np.zeros(3)
        widths = []
        for _ in range(n):
            a, b = experiment(rng, *params)
            intervals = (bootstrap_difference(a, b, resamples=2000), t_interval(a, b), difference_ci(a, b, resamples=2000))
            hits += [i.low <= DELTA <= i.high for i in intervals]
            widths.append(intervals[2].high - intervals[2].low)
        seeds, cases, seed_sd, _, _, residual_sd = params
        arm_sd = np.sqrt(seed_sd ** 2 + residual_sd ** 2 / cases)
        cov = " | ".join(f"{100 * h / n:.1f} %" for h in hits)
        print(f"| {name} | {arm_sd:.3f} | {cov} | {np.median(widths):.4f} |", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
