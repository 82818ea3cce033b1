#!/usr/bin/env python3
"""The nightly history: every night in one SQLite database, and the gate.

  ci/history.py ingest --state DIR --night DIR [--commit SHA]
      records DIR/report.json (written by ci/nightly.sh) as a new night in
      STATE/history.db and prints its id
  ci/history.py gate --state DIR --night ID [--last N] [--alpha A] [--out DIR]
      compares night ID with the last N good nights of the same machine,
      stores and prints one verdict line per (scenario, allocator, metric),
      per stage and per fuzz target, writes OUT/verdicts.md and verdicts.json;
      exits 1 on a regression, a failed stage or a new finding
  ci/history.py accept --state DIR --night ID
      an intended change: that night becomes a baseline despite its regressions
  ci/history.py nights --state DIR
      one line per night

The gate (see gate()): a hakmem run is divided by mimalloc's run of the
same round of the same night (the rounds interleave the allocators), so the
machine's drift within and across nights cancels.  This night's ratios are compared with the pooled ratios of
the last N good nights (same machine, no regression verdict) by a one-sided
Mann-Whitney U test (exact for small samples), and the change of the median
ratio is bounded by a percentile bootstrap interval.  A change is a
regression (or an improvement) only when the test rejects at --alpha AND
the median moved by more than the metric's threshold; a change beyond the
threshold that the test does not confirm is "noisy"; the rest pass.

Schema (version 1, meta.schema_version):
  meta(key PRIMARY KEY, value)
  nights(id, started, commit_sha, quick, cpu, kernel, cores, machine,
         passed, report_dir, seconds, fault, accepted)
         machine: "cpu | cores | kernel"; fault: --hakmem-fault (never a
         baseline); accepted: set by `accept` (a baseline despite regressions)
  stages(night, stage, status, seconds)
  bench(night, scenario, allocator, metric, run, value)
         metric: latency_ns | rss_kib | soft_pf, one row per measured run
         (run = its round, so allocators pair by round; < 0: order unknown)
  fuzz(night, target, engine, execs, exec_per_sec, coverage, corpus, findings)
         coverage: libFuzzer's edges, or AFL++'s bitmap percentage
  findings(night, target, engine, stack)
  mutants(night, fault, verdict, checker, seconds)
  verdicts(night, kind, subject, metric, verdict, now, base, change,
           ci_low, ci_high, p, detail)
         kind: bench | stage | fuzz | machine; verdict: pass | regression |
         improvement | noisy | no-baseline | fail | finding
"""
import argparse
import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
import time

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS nights(id INTEGER PRIMARY KEY, started TEXT, commit_sha TEXT, quick INTEGER,
  cpu TEXT, kernel TEXT, cores INTEGER, machine TEXT, passed INTEGER, report_dir TEXT, seconds INTEGER,
  fault TEXT, accepted INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS stages(night INTEGER, stage TEXT, status TEXT, seconds INTEGER);
CREATE TABLE IF NOT EXISTS bench(night INTEGER, scenario TEXT, allocator TEXT, metric TEXT, run INTEGER, value REAL);
CREATE TABLE IF NOT EXISTS fuzz(night INTEGER, target TEXT, engine TEXT, execs INTEGER, exec_per_sec REAL,
  coverage REAL, corpus INTEGER, findings INTEGER);
CREATE TABLE IF NOT EXISTS findings(night INTEGER, target TEXT, engine TEXT, stack TEXT);
CREATE TABLE IF NOT EXISTS mutants(night INTEGER, fault TEXT, verdict TEXT, checker TEXT, seconds REAL);
CREATE TABLE IF NOT EXISTS verdicts(night INTEGER, kind TEXT, subject TEXT, metric TEXT, verdict TEXT,
  now REAL, base REAL, change REAL, ci_low REAL, ci_high REAL, p REAL, detail TEXT);
CREATE INDEX IF NOT EXISTS bench_night ON bench(night);
"""

# metric -> (samples key in verify/bench.py's results.json, threshold)
METRICS = {"latency_ns": ("runs_ns", 0.03), "rss_kib": ("samples_rss_kib", 0.05),
           "soft_pf": ("samples_soft_pf", 0.10)}
UNORDERED = {"latency_ns": "samples_ns"}  # older results.json: sorted, no run order
GATED = ("hakmem-baseline", "hakmem-evolving")
REFERENCE = "mimalloc"  # the peer every ratio is taken against, the same night
FAILING = ("regression", "fail", "finding")


def connect(state):
    os.makedirs(state, exist_ok=True)
    db = sqlite3.connect(os.path.join(state, "history.db"))
    db.executescript(SCHEMA)
    cols = {r[1] for r in db.execute("PRAGMA table_info(nights)")}
    for col, decl in (("fault", "TEXT"), ("accepted", "INTEGER DEFAULT 0")):  # databases of the first draft
        if col not in cols:
            db.execute(f"ALTER TABLE nights ADD COLUMN {col} {decl}")
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    if row is None:
        db.execute("INSERT INTO meta VALUES('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif int(row[0]) > SCHEMA_VERSION:
        raise SystemExit(f"history: {state}/history.db has schema {row[0]}, this script knows {SCHEMA_VERSION}")
    db.commit()
    return db


def machine_identity():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu, os.uname().release, os.cpu_count() or 0


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# ---- ingest ---------------------------------------------------------------------
def ingest(db, night_dir, commit=None, machine=None, started=None):
    """Records night_dir/report.json; returns the night's id."""
    with open(os.path.join(night_dir, "report.json")) as f:
        doc = json.load(f)
    cpu, kernel, cores = machine or machine_identity()
    started = started or doc.get("started") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    cur = db.execute("INSERT INTO nights(started, commit_sha, quick, cpu, kernel, cores, machine, passed, report_dir,"
                     " seconds, fault) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                     (started, commit or doc.get("commit") or git_commit(), int(bool(doc.get("quick"))), cpu, kernel,
                      cores, f"{cpu} | {cores} cores | {kernel}", int(bool(doc.get("passed"))),
                      os.path.abspath(night_dir), doc.get("seconds", 0), doc.get("hakmem_fault")))
    night = cur.lastrowid
    for s in doc.get("stages", []):
        db.execute("INSERT INTO stages VALUES(?,?,?,?)", (night, s["stage"], s["status"], s["seconds"]))
    for sc, rows in doc.get("bench", {}).get("results", {}).items():
        for alloc, r in rows.items():
            for metric, (key, _) in METRICS.items():
                ordered = key in r
                for i, v in enumerate(r.get(key, r.get(UNORDERED.get(metric, ""), []))):
                    # run -1 - i: no run order known (not paired by round)
                    db.execute("INSERT INTO bench VALUES(?,?,?,?,?,?)",
                               (night, sc, alloc, metric, i if ordered else -1 - i, float(v)))
    fuzz = doc.get("fuzz") or {}
    per = {}  # (target, engine) -> one row: AFL's instances of a target share a queue
    for t in fuzz.get("targets", []):
        r = per.setdefault((t["target"], t["engine"]), [0, 0.0, 0.0, 0, 0])
        r[0] += t.get("execs", 0)
        r[1] += t.get("exec_per_sec", 0.0)
        r[2] = max(r[2], coverage_number(t.get("coverage")))
        r[3] = max(r[3], t.get("corpus", 0))
        r[4] += t.get("findings", 0)
    for (target, engine), r in per.items():
        db.execute("INSERT INTO fuzz VALUES(?,?,?,?,?,?,?,?)", (night, target, engine, *r))
    for f in fuzz.get("findings", []):
        db.execute("INSERT INTO findings VALUES(?,?,?,?)", (night, f["target"], f["engine"], f["stack"]))
    for m in doc.get("mutants", []):
        db.execute("INSERT INTO mutants VALUES(?,?,?,?,?)",
                   (night, m["fault"], m["verdict"], m["checker"], float(m.get("seconds", 0))))
    db.commit()
    return night


def coverage_number(cov):
    """The first number of campaign.py's coverage text: libFuzzer's edges
    ("2419 edges, 11299 features") or AFL++'s bitmap share ("21.21%")."""
    if isinstance(cov, (int, float)):
        return float(cov)
    m = re.search(r"\d+(?:\.\d+)?", str(cov or ""))
    return float(m.group()) if m else 0.0


# ---- statistics -------------------------------------------------------------------
def median(xs):
    s = sorted(xs)
    n = len(s)
    return (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2) if n else float("nan")


def u_distribution(n, m):
    """counts[k]: orderings of n xs and m ys (no ties) with U = k.  The
    largest element is an x (beating all j ys) or a y (beating none)."""
    f = [[None] * (m + 1) for _ in range(n + 1)]
    for i in range(n + 1):
        for j in range(m + 1):
            if i == 0 or j == 0:
                f[i][j] = [1] + [0] * (i * j)
                continue
            c = [0] * (i * j + 1)
            for k, v in enumerate(f[i - 1][j]):
                c[k + j] += v
            for k, v in enumerate(f[i][j - 1]):
                c[k] += v
            f[i][j] = c
    return f[n][m]


def mann_whitney_greater(x, y):
    """One-sided p-value of H1: x tends to be larger than y.  Exact
    (permutation distribution of U by counting) without ties and for small
    samples; otherwise the normal approximation with the tie correction."""
    n, m = len(x), len(y)
    both = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks = [0.0] * len(both)
    i = 0
    ties = 0.0
    while i < len(both):
        j = i
        while j + 1 < len(both) and both[j + 1][0] == both[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t ** 3 - t
        i = j + 1
    rx = sum(r for r, (_, g) in zip(ranks, both) if g == 0)
    u = rx - n * (n + 1) / 2  # pairs (xi, yj) with xi > yj (ties count 1/2)
    if ties == 0 and n * m <= 2500:
        dist = u_distribution(n, m)
        return sum(dist[int(round(u)):]) / math.comb(n + m, n)
    mu = n * m / 2
    sigma = math.sqrt(n * m / 12 * ((n + m + 1) - ties / ((n + m) * (n + m - 1))))
    if sigma == 0:
        return 1.0
    z = (u - mu - 0.5) / sigma
    return 0.5 * math.erfc(z / math.sqrt(2))


def bootstrap_ratio(x, y, reps=2000, seed=1):
    """95 % percentile interval of median(x) / median(y) - 1."""
    rng = random.Random(seed)
    out = []
    for _ in range(reps):
        bx = [rng.choice(x) for _ in x]
        by = [rng.choice(y) for _ in y]
        out.append(median(bx) / median(by) - 1)
    out.sort()
    return out[int(0.025 * reps)], out[int(0.975 * reps) - 1]


def verdict_of(now, base, threshold, alpha):
    """(verdict, change, ci, p) of this night's ratios now against base."""
    change = median(now) / median(base) - 1
    lo, hi = bootstrap_ratio(now, base)
    p_slow = mann_whitney_greater(now, base)
    p_fast = mann_whitney_greater([-v for v in now], [-v for v in base])
    if change > threshold and p_slow < alpha:
        return "regression", change, (lo, hi), p_slow
    if change < -threshold and p_fast < alpha:
        return "improvement", change, (lo, hi), p_fast
    if abs(change) > threshold:
        return "noisy", change, (lo, hi), min(p_slow, p_fast)
    return "pass", change, (lo, hi), min(p_slow, p_fast)


# ---- gate -------------------------------------------------------------------------
def ratios(db, night, scenario, alloc, metric):
    """hakmem's samples of one night over mimalloc's of the same round (the
    allocators of a round ran side by side, so a slow moment of the machine
    cancels); over mimalloc's median when the runs' order is not known."""
    q = "SELECT run, value FROM bench WHERE night=? AND scenario=? AND allocator=? AND metric=?"
    ref = dict(db.execute(q, (night, scenario, REFERENCE, metric)).fetchall())
    xs = dict(db.execute(q, (night, scenario, alloc, metric)).fetchall())
    if xs and all(k >= 0 and ref.get(k, 0) > 0 for k in xs):
        return [xs[k] / ref[k] for k in sorted(xs)]
    r = median(list(ref.values())) if ref else 0
    return [v / r for v in xs.values()] if r > 0 else []


def good_nights(db, night, last, cell=None):
    """The last `last` nights before `night` on the same machine that can be
    a baseline: none before the last accepted night (ci/history.py accept:
    an intended change starts a new baseline), no failing verdict unless accepted,
    not built with a deliberate fault (--hakmem-fault), and, for a cell,
    with samples of it (nights that ran no benchmark use up no slot)."""
    machine = db.execute("SELECT machine FROM nights WHERE id=?", (night,)).fetchone()[0]
    # an accepted night starts a new baseline: the nights before it are the old state
    since = db.execute("SELECT COALESCE(MAX(id), 0) FROM nights WHERE id<? AND accepted=1", (night,)).fetchone()[0]
    q = ("SELECT id FROM nights WHERE id<? AND id>=? AND machine=? AND (fault IS NULL OR fault='') AND (accepted=1 OR "
         "id NOT IN (SELECT night FROM verdicts WHERE verdict IN ('regression','finding')))")
    args = [night, since, machine]
    if cell is not None:
        q += " AND id IN (SELECT night FROM bench WHERE scenario=? AND allocator=? AND metric=?)"
        args += list(cell)
    q += " ORDER BY id DESC LIMIT ?"
    return [r[0] for r in db.execute(q, args + [last]).fetchall()]


def gate(db, night, last=5, alpha=0.01):
    """Computes, stores and returns this night's verdicts."""
    db.execute("DELETE FROM verdicts WHERE night=?", (night,))
    out = []

    def add(kind, subject, metric, verdict, now=None, base=None, change=None, ci=(None, None), p=None, detail=""):
        out.append({"kind": kind, "subject": subject, "metric": metric, "verdict": verdict, "now": now, "base": base,
                     "change": change, "ci_low": ci[0], "ci_high": ci[1], "p": p, "detail": detail})

    row = db.execute("SELECT machine FROM nights WHERE id=?", (night,)).fetchone()
    if row is None:
        raise SystemExit(f"history: no night {night}")
    base_nights = good_nights(db, night, last)
    earlier = db.execute("SELECT COUNT(*) FROM nights WHERE id<?", (night,)).fetchone()[0]
    if earlier and not base_nights:
        add("machine", row[0], "-", "no-baseline",
            detail="no earlier night on this machine (CPU model, cores, kernel): nothing compared")
    for stage, status, secs in db.execute("SELECT stage, status, seconds FROM stages WHERE night=?", (night,)).fetchall():
        add("stage", stage, "status", "pass" if status == "pass" else "fail", now=secs, detail=f"{secs} s")
    cells = db.execute("SELECT DISTINCT scenario, allocator, metric FROM bench WHERE night=? ORDER BY scenario, "
                       "allocator, metric", (night,)).fetchall()
    for sc, alloc, metric in cells:
        if alloc not in GATED:
            continue
        threshold = METRICS[metric][1]
        now = ratios(db, night, sc, alloc, metric)
        cell_nights = good_nights(db, night, last, (sc, alloc, metric))
        base = [v for b in cell_nights for v in ratios(db, b, sc, alloc, metric)]
        if len(now) < 3 or len(base) < 3:
            add("bench", f"{sc}/{alloc}", metric, "no-baseline", now=median(now) if now else None,
                detail=f"{len(now)} samples now, {len(base)} before: too few to test")
            continue
        v, change, ci, p = verdict_of(now, base, threshold, alpha)
        add("bench", f"{sc}/{alloc}", metric, v, now=median(now), base=median(base), change=change, ci=ci, p=p,
            detail=f"ratio to {REFERENCE} {median(base):.3f} -> {median(now):.3f} ({change:+.1%}, 95% CI "
                   f"{ci[0]:+.1%}..{ci[1]:+.1%}), Mann-Whitney p={p:.2g}, {len(now)} vs {len(base)} samples "
                   f"from night(s) {','.join(map(str, cell_nights))}, threshold {threshold:.0%}, alpha {alpha}")
    # fuzzing: a finding whose stack no earlier night had is new
    seen = {s for (s,) in db.execute("SELECT DISTINCT stack FROM findings WHERE night<?", (night,))}
    for target, engine, stack in db.execute("SELECT target, engine, stack FROM findings WHERE night=?", (night,)):
        add("fuzz", target, "finding", "finding" if stack not in seen else "pass",
            detail=("new: " if stack not in seen else "known since an earlier night: ") + f"{engine} {stack}")
    prev = base_nights[0] if base_nights else None
    for target, engine, execs, eps, cov, corpus in db.execute(
            "SELECT target, engine, execs, exec_per_sec, coverage, corpus FROM fuzz WHERE night=?", (night,)).fetchall():
        detail = f"{execs:,} execs, {eps:,.0f}/s, coverage {cov}, corpus {corpus}"
        if prev is not None:
            p = db.execute("SELECT coverage, corpus FROM fuzz WHERE night=? AND target=? AND engine=?",
                           (prev, target, engine)).fetchone()
            if p:
                detail += f" (before: coverage {p[0]}, corpus {p[1]})"
        add("fuzz", f"{target}/{engine}", "coverage", "pass", now=cov, detail=detail)
    for v in out:
        db.execute("INSERT INTO verdicts VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                   (night, v["kind"], v["subject"], v["metric"], v["verdict"], v["now"], v["base"], v["change"],
                    v["ci_low"], v["ci_high"], v["p"], v["detail"]))
    db.commit()
    return out, base_nights


def write_verdicts(out_dir, night, verdicts, base_nights, alpha, last):
    failing = [v for v in verdicts if v["verdict"] in FAILING]
    doc = {"night": night, "baseline_nights": base_nights, "alpha": alpha, "last": last,
           "test": "one-sided Mann-Whitney U on per-run ratios to mimalloc's median of the same night; "
                   "bootstrap 95% interval of the median ratio change",
           "thresholds": {m: t for m, (_, t) in METRICS.items()},
           "failed": bool(failing), "verdicts": verdicts}
    with open(os.path.join(out_dir, "verdicts.json"), "w") as f:
        json.dump(doc, f, indent=1)
    counts = {}
    for v in verdicts:
        counts[v["verdict"]] = counts.get(v["verdict"], 0) + 1
    lines = ["## Verdicts", "",
             f"Night {night} against night(s) {', '.join(map(str, base_nights)) or 'none'} (the last {last} good "
             f"nights on this machine). Test: {doc['test']}; a regression needs p < {alpha} and a change beyond "
             "the threshold (" + ", ".join(f"{m} {t:.0%}" for m, t in doc["thresholds"].items()) + "); beyond "
             "the threshold but not significant is noisy.", "",
             "Summary: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".", "",
             "| verdict | kind | subject | metric | detail |", "|---|---|---|---|---|"]
    order = {"regression": 0, "fail": 0, "finding": 0, "improvement": 1, "noisy": 2, "no-baseline": 3, "pass": 4}
    for v in sorted(verdicts, key=lambda v: (order.get(v["verdict"], 5), v["kind"], v["subject"], v["metric"])):
        mark = v["verdict"].upper() if v["verdict"] in FAILING else v["verdict"]
        lines.append(f"| {mark} | {v['kind']} | {v['subject']} | {v['metric']} | {v['detail']} |")
    with open(os.path.join(out_dir, "verdicts.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return failing


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ingest")
    a.add_argument("--state", required=True)
    a.add_argument("--night", required=True, help="the night's output folder (report.json)")
    a.add_argument("--commit")
    g = sub.add_parser("gate")
    g.add_argument("--state", required=True)
    g.add_argument("--night", type=int, required=True)
    g.add_argument("--last", type=int, default=5)
    g.add_argument("--alpha", type=float, default=0.01)
    g.add_argument("--out", help="where verdicts.md/json go (default: the night's folder)")
    c = sub.add_parser("accept", help="a night whose change is intended becomes a baseline despite its regressions")
    c.add_argument("--state", required=True)
    c.add_argument("--night", type=int, required=True)
    n = sub.add_parser("nights")
    n.add_argument("--state", required=True)
    args = ap.parse_args()
    db = connect(args.state)
    if args.cmd == "ingest":
        print(ingest(db, args.night, args.commit))
    elif args.cmd == "gate":
        verdicts, base = gate(db, args.night, args.last, args.alpha)
        out = args.out or db.execute("SELECT report_dir FROM nights WHERE id=?", (args.night,)).fetchone()[0]
        failing = write_verdicts(out, args.night, verdicts, base, args.alpha, args.last)
        for v in verdicts:
            if v["verdict"] != "pass" or v["kind"] == "bench":
                print(f"gate: {v['verdict']:11s} {v['kind']:5s} {v['subject']} {v['metric']}: {v['detail']}")
        print(f"gate: night {args.night}: {len(failing)} failing verdict(s) of {len(verdicts)}")
        return 1 if failing else 0
    elif args.cmd == "accept":
        if db.execute("UPDATE nights SET accepted=1 WHERE id=?", (args.night,)).rowcount != 1:
            raise SystemExit(f"history: no night {args.night}")
        db.commit()
        print(f"history: night {args.night} is a baseline from now on")
    else:
        for row in db.execute("SELECT id, started, substr(commit_sha,1,10), quick, passed, fault, accepted, machine "
                              "FROM nights"):
            print(*row, sep="\t")
    return 0


if __name__ == "__main__":
    sys.exit(main())
