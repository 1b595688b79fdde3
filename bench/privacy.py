"""``python -m bench.privacy``: what differential privacy costs a published feeder total.

For feeders of 10 to 5,000 synthetic household meters (15-minute consumption, log-normal around
0.12 kWh, clipped at ``--clip-kwh``) and several epsilons, releases the feeder total of one interval
and of a whole day (96 intervals, sensitivity grows with sqrt(96)) many times and reports the
median relative error |noisy - true| / true. Prints a table and writes
``bench/results/privacy.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

from openfeeder.security.privacy import GaussianMethod, gaussian_sigma, private_feeder_totals

RESULTS = Path(__file__).parent / "results"
DEFAULT_METERS = (10, 50, 100, 500, 1000, 5000)
DEFAULT_EPSILONS = (0.1, 0.5, 1.0, 2.0)


def _household_day(rng: random.Random, intervals: int) -> list[float]:
    """One meter's 15-minute consumption in kWh: a daily shape times log-normal noise."""
    shape = [
        0.6 + 0.5 * math.exp(-(((i / 4) - 8) ** 2) / 4) + 0.9 * math.exp(-(((i / 4) - 19) ** 2) / 6)
        for i in range(intervals)
    ]
    scale = rng.lognormvariate(0.0, 0.4)
    return [0.1 * s * scale * rng.lognormvariate(0.0, 0.3) for s in shape]


def measure(
    *,
    meters: tuple[int, ...],
    epsilons: tuple[float, ...],
    delta: float,
    clip_kwh: float,
    trials: int,
    seed: int,
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for count in meters:
        day = {f"m{i}": _household_day(rng, 96) for i in range(count)}
        feeder_of = dict.fromkeys(day, "F")
        one = {meter: values[72:73] for meter, values in day.items()}  # 18:00-18:15
        true_one = sum(min(v[0], clip_kwh) for v in one.values())
        true_day = sum(min(x, clip_kwh) for v in day.values() for x in v)
        for epsilon in epsilons:
            errors_one = []
            errors_day = []
            for _ in range(trials):
                release = private_feeder_totals(
                    one, feeder_of, epsilon=epsilon, delta=delta, clip_kwh=clip_kwh, rng=rng
                )
                errors_one.append(abs(release.totals_kwh["F"][0] - true_one) / true_one)
            for _ in range(max(1, trials // 10)):
                release = private_feeder_totals(
                    day, feeder_of, epsilon=epsilon, delta=delta, clip_kwh=clip_kwh, rng=rng
                )
                errors_day.append(abs(sum(release.totals_kwh["F"]) - true_day) / true_day)
            rows.append(
                {
                    "meters": count,
                    "epsilon": epsilon,
                    "delta": delta,
                    "sigma_interval_kwh": gaussian_sigma(
                        epsilon=epsilon, delta=delta, sensitivity=clip_kwh
                    ),
                    "sigma_classic_interval_kwh": (
                        gaussian_sigma(
                            epsilon=epsilon,
                            delta=delta,
                            sensitivity=clip_kwh,
                            method=GaussianMethod.CLASSIC,
                        )
                        if epsilon < 1
                        else None
                    ),
                    "true_interval_kwh": true_one,
                    "median_rel_error_interval": statistics.median(errors_one),
                    "p95_rel_error_interval": sorted(errors_one)[int(0.95 * len(errors_one))],
                    "median_rel_error_day_profile_total": statistics.median(errors_day),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.privacy", description=__doc__)
    parser.add_argument("--meters", default=",".join(map(str, DEFAULT_METERS)))
    parser.add_argument("--epsilons", default=",".join(map(str, DEFAULT_EPSILONS)))
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clip-kwh", type=float, default=1.0)
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "privacy.json")
    args = parser.parse_args(argv)
    rows = measure(
        meters=tuple(int(v) for v in args.meters.split(",")),
        epsilons=tuple(float(v) for v in args.epsilons.split(",")),
        delta=args.delta,
        clip_kwh=args.clip_kwh,
        trials=args.trials,
        seed=args.seed,
    )
    print(
        f"{'meters':>7} {'eps':>5} {'sigma kWh':>10} {'total kWh':>10} "
        f"{'med rel err':>12} {'p95 rel err':>12} {'day: med rel err':>17}"
    )
    for row in rows:
        print(
            f"{row['meters']:>7} {row['epsilon']:>5g} {row['sigma_interval_kwh']:>10.3f} "
            f"{row['true_interval_kwh']:>10.1f} {row['median_rel_error_interval']:>12.2%} "
            f"{row['p95_rel_error_interval']:>12.2%} "
            f"{row['median_rel_error_day_profile_total']:>17.3%}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"delta": args.delta, "clip_kwh": args.clip_kwh, "trials": args.trials, "rows": rows},
            indent=1,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
