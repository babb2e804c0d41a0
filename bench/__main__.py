"""`python -m bench [--quick] [--json PATH] [--only NAMES]`: run the benchmarks, print a table."""

from __future__ import annotations

import argparse
import logging
import time
import warnings

from bench.harness import Result, bench_env, goal_summary, machine, machine_state, table, write_json

# Recording first: it and its baseline then both write into empty tables.
BENCHES = ("recording", "aggregation", "daily", "retries", "dashboard", "exporter", "pages", "scale", "artifacts")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 3 minutes)")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(BENCHES)}")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)
    chosen = args.only.split(",") if args.only else list(BENCHES)
    t0 = time.perf_counter()
    results: list[Result] = []
    states: dict[str, dict] = {}
    with bench_env(args.quick) as env:
        info = machine(env)
        print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
        for name in chosen:
            module = __import__(f"bench.{name}", fromlist=["run"])
            # The machine's state as each bench starts: a ratio off its usual spread next to
            # a high load or a small page cache says where to look.
            states[name] = machine_state()
            print(f"-- {name} (" + ", ".join(f"{k}={v}" for k, v in states[name].items()) + ")", flush=True)
            for result in module.run(env):
                results.append(result)
                print(table([result]).splitlines()[-1], flush=True)
    seconds = time.perf_counter() - t0
    print()
    print(table(results))
    print("\n" + goal_summary(results))
    print(f"total {seconds:.0f} s ({'quick' if args.quick else 'full'})")
    if args.json:
        write_json(args.json, info, results, seconds, states)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
