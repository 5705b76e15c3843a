"""python -m tests.explorer [--seed N | --schedules N --first N] [--steps N]"""

from __future__ import annotations

import argparse
import sys

from tests.explorer.run import DEFAULT_SCHEDULES, DEFAULT_STEPS, explore, summary
from tests.explorer.sim import Violation


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.explorer", description=__doc__)
    parser.add_argument("--seed", type=int, help="replay this one schedule")
    parser.add_argument("--schedules", type=int, default=DEFAULT_SCHEDULES)
    parser.add_argument("--first", type=int, default=0, help="first seed of the range")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    args = parser.parse_args()
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.schedules)
    try:
        stats, wall, cpu = explore(seeds, args.steps)
    except Violation as exc:
        print(f"explorer: invariant broken: {exc}", file=sys.stderr)
        return 1
    print(summary(stats, wall, cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
