#!/usr/bin/env python3
"""hakmem's benchmark: the original's table, side by side with the peers.

Runs every scenario of verify/scenarios.c (one process per scenario,
allocator and run) under glibc, mimalloc, jemalloc, tcmalloc (Debian
libraries, LD_PRELOAD of the same binary) and hakmem in its two modes, with
warm-up runs first and the measured runs interleaved across allocators so
that machine drift hits all of them alike.  Every hakmem run checks hakmem's
own statistics and fails loudly if hakmem did not serve the allocations.

Writes DIR/report.md (one table per scenario: rank, allocator, latency, vs
best, soft and hard page faults, peak RSS, ops/sec), DIR/results.json,
DIR/results.csv and DIR/chart.png (gnuplot: latency relative to the best per
scenario).  Progress goes to stderr.
"""
import argparse
import csv
import glob
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SCENARIOS = ["json", "mir", "vm", "mixed", "small", "mid", "large", "mt", "prodcons", "cold", "purge", "sites", "wrapped"]
ALLOCATORS = ["system", "mimalloc", "jemalloc", "tcmalloc", "hakmem-baseline", "hakmem-evolving"]
PEER_LIBS = {
    "mimalloc": "libmimalloc.so.2",
    "jemalloc": "libjemalloc.so.2",
    "tcmalloc": "libtcmalloc_minimal.so.4",
}


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def find_peer(name):
    for d in ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]:
        path = os.path.join(d, PEER_LIBS[name])
        if os.path.exists(path):
            return path
    hits = glob.glob("/usr/lib/**/" + PEER_LIBS[name], recursive=True)
    return hits[0] if hits else None


def environment(alloc, hakmem_lib, stats_file):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAKMEM_") and k != "LD_PRELOAD"}
    if alloc in PEER_LIBS:
        env["LD_PRELOAD"] = find_peer(alloc)
    elif alloc.startswith("hakmem"):
        env["LD_PRELOAD"] = hakmem_lib
        env["HAKMEM_MODE"] = alloc.split("-", 1)[1]
        env["HAKMEM_STATS"] = "json"
        env["HAKMEM_STATS_FILE"] = stats_file
    return env


def run_once(binary, scenario, alloc, hakmem_lib, tmp):
    stats_file = os.path.join(tmp, "stats.json")
    if os.path.exists(stats_file):
        os.unlink(stats_file)
    proc = subprocess.run([binary, scenario], env=environment(alloc, hakmem_lib, stats_file),
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {scenario} under {alloc} failed ({proc.returncode}): {proc.stderr.strip()}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if alloc.startswith("hakmem"):
        check_served(result, alloc, stats_file)
    return result


def check_served(result, alloc, stats_file):
    """hakmem must have served the run: its counters cover the mallocs."""
    try:
        with open(stats_file) as f:
            stats = json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        raise SystemExit(f"bench: {alloc} wrote no statistics for {result['scenario']}: hakmem did not run")
    served = sum(stats["served"].values())
    mallocs = result["ops"] // 2
    if served < mallocs:
        raise SystemExit(f"bench: {alloc} served {served} allocations of {mallocs} in {result['scenario']}: "
                         "not measuring hakmem")
    want_mode = alloc.split("-", 1)[1]
    if stats["learn"]["mode"] != want_mode:
        raise SystemExit(f"bench: {alloc} ran in mode {stats['learn']['mode']}")
    result["hakmem"] = {"served": stats["served"], "bigcache": stats["bigcache"], "batch": stats["batch"],
                        "learn": {k: v for k, v in stats["learn"].items() if k != "elo"}}


def quantile(values, q):
    """Nearest-rank quantile of a sorted list."""
    k = max(0, min(len(values) - 1, int(round(q * (len(values) - 1)))))
    return values[k]


def summarize(runs):
    lat = sorted(r["ns_per_iter"] for r in runs)
    med = statistics.median(lat)
    secs = statistics.median(r["seconds"] for r in runs)
    return {
        "latency_ns": med,
        "p95_ns": quantile(lat, 0.95),
        "p99_ns": quantile(lat, 0.99),
        "min_ns": lat[0],
        "max_ns": lat[-1],
        "soft_pf": statistics.median(r["minflt"] for r in runs),
        "hard_pf": statistics.median(r["majflt"] for r in runs),
        "rss_kib": statistics.median(r["maxrss_kib"] for r in runs),
        "rss_end_kib": statistics.median(r.get("rss_end_kib", -1) for r in runs),
        "rss_free_kib": statistics.median(r.get("rss_free_kib", -1) for r in runs),
        "ops_per_sec": runs[0]["ops"] / secs if secs > 0 else 0.0,
        "runs": len(runs),
        "samples_ns": lat,
        # per run, in run order (round i of every allocator ran side by
        # side): the nightly gate pairs them by round, and tests memory like time
        "runs_ns": [r["ns_per_iter"] for r in runs],
        "samples_rss_kib": [r["maxrss_kib"] for r in runs],
        "samples_soft_pf": [r["minflt"] for r in runs],
        # what a scenario reports beside its iteration (sites: churn_ns;
        # prodcons: malloc_ns_first/last), medians
        "extra_ns": {k: statistics.median(r[k] for r in runs)
                     for k in sorted(runs[0]) if "_ns" in k and k != "ns_per_iter"
                     and all(isinstance(r.get(k), (int, float)) for r in runs)},
    }


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e4:
        return f"{ns / 1e3:,.1f} µs"
    return f"{ns:,.0f} ns"


def write_report(out, results, args, started, elapsed):
    lines = ["# hakmem benchmark", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {platform.machine()}, "
             f"{os.cpu_count()} cores, kernel {platform.release()}; {args.runs} measured runs per cell after "
             f"{args.warmup} warm-up, interleaved across allocators; {elapsed:.0f} s in all.",
             "Latency: median ns per iteration over runs (noise: min-max); faults and RSS: medians; "
             "vs best: median / best median of the scenario.", ""]
    for sc, rows in results.items():
        best = min(r["latency_ns"] for r in rows.values())
        freed = any(r.get("rss_free_kib", -1) >= 0 for r in rows.values())
        extra = sorted({k for r in rows.values() for k in r.get("extra_ns", {})})
        lines += [f"## {sc}", "",
                  "| rank | allocator | latency | vs best | min-max | soft PF | hard PF | peak RSS | "
                  + ("RSS after free | " if freed else "") + "end RSS | ops/sec |" + "".join(f" {k} |" for k in extra),
                  "|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if freed else "") + "---:|---:|"
                  + "---:|" * len(extra)]
        for rank, (alloc, r) in enumerate(sorted(rows.items(), key=lambda kv: kv[1]["latency_ns"]), 1):
            lines.append(f"| {rank} | {alloc} | {fmt_ns(r['latency_ns'])} | {r['latency_ns'] / best:.2f}x | "
                         f"{fmt_ns(r['min_ns'])}-{fmt_ns(r['max_ns'])} | {r['soft_pf']:.0f} | {r['hard_pf']:.0f} | "
                         f"{r['rss_kib'] / 1024:.1f} MiB | "
                         + (f"{r['rss_free_kib'] / 1024:.1f} MiB | " if freed else "")
                         + f"{r['rss_end_kib'] / 1024:.1f} MiB | {r['ops_per_sec']:,.0f} |"
                         + "".join(f" {fmt_ns(r['extra_ns'][k])} |" if k in r.get("extra_ns", {}) else " - |"
                                   for k in extra))
        lines.append("")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines))


def write_csv(out, results):
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scenario", "allocator", "latency_ns", "p95_ns", "p99_ns", "min_ns", "max_ns",
                    "vs_best", "soft_pf", "hard_pf", "rss_kib", "rss_end_kib", "rss_free_kib", "ops_per_sec", "runs"])
        for sc, rows in results.items():
            best = min(r["latency_ns"] for r in rows.values())
            for alloc, r in rows.items():
                w.writerow([sc, alloc, f"{r['latency_ns']:.1f}", f"{r['p95_ns']:.1f}", f"{r['p99_ns']:.1f}",
                            f"{r['min_ns']:.1f}", f"{r['max_ns']:.1f}", f"{r['latency_ns'] / best:.3f}",
                            f"{r['soft_pf']:.0f}", f"{r['hard_pf']:.0f}", f"{r['rss_kib']:.0f}",
                            f"{r['rss_end_kib']:.0f}", f"{r['rss_free_kib']:.0f}",
                            f"{r['ops_per_sec']:.0f}", r["runs"]])


def write_chart(out, results, allocators):
    gnuplot = shutil.which("gnuplot")
    if gnuplot is None:
        raise SystemExit("bench: gnuplot not found (ci/setup.sh installs gnuplot-nox)")
    data = os.path.join(out, "chart.dat")
    with open(data, "w") as f:
        f.write("scenario " + " ".join(allocators) + "\n")
        for sc, rows in results.items():
            best = min(r["latency_ns"] for r in rows.values())
            f.write(sc + " " + " ".join(f"{rows[a]['latency_ns'] / best:.4f}" if a in rows else "NaN"
                                        for a in allocators) + "\n")
    script = f"""
set terminal pngcairo size 1100,560 noenhanced font ",10"
set output '{os.path.join(out, "chart.png")}'
set title 'hakmem benchmark: median latency relative to the best allocator per scenario (lower is better)'
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y 2
set yrange [0.8:*]
set ylabel 'latency / best'
set grid ytics
set key outside right top
plot for [i=2:{len(allocators) + 1}] '{data}' using i:xtic(1) title columnheader(i)
"""
    proc = subprocess.run([gnuplot], input=script, text=True, capture_output=True)
    if proc.returncode != 0 or not os.path.exists(os.path.join(out, "chart.png")):
        # pngcairo may be missing in gnuplot-nox: fall back to the png terminal
        script = script.replace("set terminal pngcairo size 1100,560 noenhanced font \",10\"",
                                "set terminal png size 1100,560 noenhanced")
        proc = subprocess.run([gnuplot], input=script, text=True, capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench: gnuplot failed: {proc.stderr.strip()}")
    os.unlink(data)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 runs per cell (about 3 minutes)")
    ap.add_argument("--runs", type=int, help="measured runs per cell (default 10, --quick 3)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up runs per cell (default 1)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--allocators", default=",".join(ALLOCATORS))
    ap.add_argument("--out", help="output folder (default bench-out/<time>)")
    ap.add_argument("--binary", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--hakmem", required=True, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.runs = args.runs or (3 if args.quick else 10)
    scenarios = [s for s in args.scenarios.split(",") if s]
    allocators = [a for a in args.allocators.split(",") if a]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s} (have {', '.join(SCENARIOS)})")
    for a in allocators:
        if a not in ALLOCATORS:
            ap.error(f"unknown allocator {a} (have {', '.join(ALLOCATORS)})")
        if a in PEER_LIBS and find_peer(a) is None:
            raise SystemExit(f"bench: {a} is not installed ({PEER_LIBS[a]}); run ci/setup.sh")
    base = os.environ.get("BUILD_WORKING_DIRECTORY", os.getcwd())
    out = args.out or os.path.join("bench-out", time.strftime("%Y%m%d-%H%M%S"))
    out = out if os.path.isabs(out) else os.path.join(base, out)
    os.makedirs(out, exist_ok=True)

    started = time.time()
    runs = {s: {a: [] for a in allocators} for s in scenarios}
    total = len(scenarios) * len(allocators) * (args.warmup + args.runs)
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.warmup + args.runs):
            warm = round_no < args.warmup
            for s in scenarios:
                # a new order each round (seeded: reproducible), so no allocator
                # always runs first nor always after the same one (a rotation
                # kept hakmem-evolving right after hakmem-baseline every round:
                # a run may pay for what its predecessor left the machine)
                order = list(allocators)
                random.Random(f"{s}/{round_no}").shuffle(order)
                for a in order:
                    r = run_once(args.binary, s, a, args.hakmem, tmp)
                    if not warm:
                        runs[s][a].append(r)
                    done += 1
            log(f"{'warm-up' if warm else 'run'} {round_no + 1 - (0 if warm else args.warmup)}/"
                f"{args.warmup if warm else args.runs} done ({done}/{total} processes, "
                f"{time.time() - started:.0f} s)")
    results = {s: {a: summarize(runs[s][a]) for a in allocators} for s in scenarios}
    hak = {s: {a: runs[s][a][-1].get("hakmem") for a in allocators if a.startswith("hakmem")} for s in scenarios}
    elapsed = time.time() - started
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"machine": {"cores": os.cpu_count(), "kernel": platform.release(), "arch": platform.machine()},
                   "runs": args.runs, "warmup": args.warmup, "results": results, "hakmem_stats": hak}, f, indent=1)
    write_csv(out, results)
    write_report(out, results, args, started, elapsed)
    write_chart(out, results, allocators)
    with open(os.path.join(out, "report.md")) as f:
        print(f.read())
    log(f"wrote {out}/report.md, results.json, results.csv, chart.png")


if __name__ == "__main__":
    main()
