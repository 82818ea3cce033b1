#!/usr/bin/env python3
"""Fuzzing campaign: every fuzz target under libFuzzer and/or AFL++.

  fuzz/campaign.sh (--hours H | --minutes M) [--jobs N] [--engine libfuzzer|afl|both]
                   [--corpus DIR] --out DIR

Builds the libFuzzer targets (bazel --config=libfuzzer) and the AFL++
persistent targets (fuzz/afl.sh), and with libFuzzer also a ThreadSanitizer
build of the multithreaded target (bazel --config=libfuzzer_tsan, engine
"tsan", races on libFuzzer's own counters suppressed by fuzz/tsan.supp,
its findings reproduced with that build), then runs every (target, engine) pair for
an equal share of the time, N at a time, each starting from the target's
seed corpus and dictionary (AFL instances of one target share a queue
folder, -M/-S).  Prints progress every minute.  At the end (or on SIGINT,
keeping what was found) it reproduces every finding with the libFuzzer
binary, deduplicates them by their top stack frames, minimizes one input
per stack, dumps it as a trace where the target supports it, and writes
DIR/summary.md and DIR/summary.json (per target and engine: execs, exec/s,
corpus size, coverage, findings) and DIR/findings/<target>-<n>/ with the
input, the trace, the log and a repro command.

Campaigns accumulate: with --corpus DIR every run starts from DIR/<target>
(plus the committed seeds) and its new inputs are merged back into it
(libFuzzer -merge=1, which keeps only inputs that add coverage), so the
next night starts where this one ended.  libFuzzer runs with -timeout=20
and -rss_limit_mb=4096; AFL++ runs a main (-M) and, with two jobs or more,
a secondary (-S) instance per target on one queue.  A finding that does
not reproduce alone is reported as flaky, its input kept.  Deduplication
keys are the top frames inside hakmem's sources (symbols are kept: fuzz
builds are not stripped), numbers normalized.
"""
import argparse
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRACE_TARGETS = {"api_fuzzer", "api_mt_fuzzer"}
# "tsan": the multithreaded target built with libFuzzer + ThreadSanitizer
# (bazel --config=libfuzzer_tsan), run beside the ASan one.
LIBFUZZER_ENGINES = ("libfuzzer", "tsan")
TSAN_TARGETS = ["api_mt_fuzzer"]
TSAN_OPTIONS = f"halt_on_error=1:second_deadlock_stack=1:suppressions={ROOT}/fuzz/tsan.supp"


def log(msg):
    print(f"campaign: {time.strftime('%H:%M:%S')} {msg}", flush=True)


def targets():
    with open(os.path.join(ROOT, "fuzz", "BUILD")) as f:
        return re.findall(r'^    "(\w+_fuzzer)",$', f.read(), re.M)


def build(out, engines):
    bins = {}
    if "libfuzzer" in engines:
        log("building libFuzzer targets (bazel --config=libfuzzer)")
        subprocess.run(["bazel", "build", "--config=libfuzzer", "//fuzz:all"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bin_dir = subprocess.run(["bazel", "info", "--config=libfuzzer", "bazel-bin"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
        os.makedirs(os.path.join(out, "libfuzzer-bin"), exist_ok=True)
        for t in targets():
            dst = os.path.join(out, "libfuzzer-bin", t)
            shutil.copy(os.path.join(bin_dir, "fuzz", t), dst)
            bins[("libfuzzer", t)] = dst
        log("building the TSan libFuzzer targets (bazel --config=libfuzzer_tsan)")
        tsan_labels = [f"//fuzz:{t}" for t in TSAN_TARGETS]
        subprocess.run(["bazel", "build", "--config=libfuzzer_tsan"] + tsan_labels, cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tsan_dir = subprocess.run(["bazel", "info", "--config=libfuzzer_tsan", "bazel-bin"], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout.strip()
        os.makedirs(os.path.join(out, "tsan-bin"), exist_ok=True)
        for t in TSAN_TARGETS:
            dst = os.path.join(out, "tsan-bin", t)
            shutil.copy(os.path.join(tsan_dir, "fuzz", t), dst)
            bins[("tsan", t)] = dst
    if "afl" in engines:
        log("building AFL++ targets (fuzz/afl.sh)")
        afl_dir = os.path.join(out, "afl-bin")
        env = dict(os.environ, AFL_QUIET="1", AFL_USE_ASAN="1", AFL_USE_UBSAN="1")
        subprocess.run(["bash", os.path.join(ROOT, "fuzz", "afl.sh"), afl_dir], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for t in targets():
            bins[("afl", t)] = os.path.join(afl_dir, t)
    return bins


class Run:
    def __init__(self, engine, target, binary, out, seconds, corpus_dir=None, role="main"):
        self.engine, self.target, self.binary, self.seconds = engine, target, binary, seconds
        self.corpus_dir, self.role = corpus_dir, role
        self.dir = os.path.join(out, engine, target) + ("" if role == "main" else "-" + role)
        self.corpus = os.path.join(self.dir, "corpus")
        self.crashes = os.path.join(self.dir, "crashes")
        os.makedirs(self.corpus, exist_ok=True)
        os.makedirs(self.crashes, exist_ok=True)
        self.log_path = os.path.join(self.dir, "fuzz.log")
        self.proc = None
        self.started = None
        self.stats = {"execs": 0, "exec_per_sec": 0.0, "coverage": "", "corpus": 0, "findings": 0}

    def start(self):
        seeds = os.path.join(ROOT, "fuzz", "corpus", self.target)
        dict_path = os.path.join(seeds, self.target + ".dict")
        logf = open(self.log_path, "w")
        if self.engine in LIBFUZZER_ENGINES:
            for s in glob.glob(os.path.join(seeds, "seed-*")):
                shutil.copy(s, self.corpus)
            cmd = [self.binary, f"-max_total_time={self.seconds}", f"-artifact_prefix={self.crashes}/",
                   "-timeout=20", "-rss_limit_mb=4096",
                   "-print_final_stats=1", "-close_fd_mask=2" if self.target in ("options_fuzzer", "misuse_fuzzer") else "-verbosity=1",
                   self.corpus]
            if self.corpus_dir and os.path.isdir(os.path.join(self.corpus_dir, self.target)):
                cmd.append(os.path.join(self.corpus_dir, self.target))  # read: the accumulated corpus
            if os.path.exists(dict_path):
                cmd.insert(1, f"-dict={dict_path}")
            env = dict(os.environ, TSAN_OPTIONS=TSAN_OPTIONS) if self.engine == "tsan" else None
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        else:
            inp = os.path.join(self.dir, "in")
            os.makedirs(inp, exist_ok=True)
            for s in glob.glob(os.path.join(seeds, "seed-*")):
                shutil.copy(s, inp)
            acc = os.path.join(self.corpus_dir, self.target) if self.corpus_dir else None
            for s in (glob.glob(os.path.join(acc, "*")) if acc and os.path.isdir(acc) else [])[:2000]:
                if os.path.isfile(s) and os.path.getsize(s) < (1 << 20):
                    shutil.copy(s, inp)
            env = dict(os.environ, AFL_SKIP_CPUFREQ="1", AFL_NO_UI="1", AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES="1",
                       AFL_NO_AFFINITY="1")
            # main and secondary instances share one output (queue) folder
            afl_out = os.path.join(os.path.dirname(self.dir), self.target, "afl")
            cmd = ["afl-fuzz", "-i", inp, "-o", afl_out, "-M" if self.role == "main" else "-S", self.role,
                   "-V", str(self.seconds), "-m", "none", "-t", "20000"]
            if os.path.exists(dict_path):
                cmd += ["-x", dict_path]
            cmd += ["--", self.binary]
            self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.started = time.time()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.running():
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def update(self):
        if self.engine in LIBFUZZER_ENGINES:
            try:
                with open(self.log_path, errors="replace") as f:
                    text = f.read()
            except OSError:
                return
            m = None
            for m in re.finditer(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/\S+.*?exec/s: (\d+)", text):
                pass
            if m:
                self.stats.update(execs=int(m.group(1)), coverage=f"{m.group(2)} edges, {m.group(3)} features",
                                  corpus=int(m.group(4)), exec_per_sec=float(m.group(5)))
            done = re.search(r"stat::number_of_executed_units: (\d+)", text)
            if done:
                self.stats["execs"] = int(done.group(1))
            self.stats["findings"] = len(self.finding_files())
        else:
            path = os.path.join(self.dir, "afl", "main", "fuzzer_stats")
            try:
                with open(path) as f:
                    st = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
            except OSError:
                return
            st = {k.strip(): v.strip() for k, v in st.items()}
            self.stats.update(execs=int(st.get("execs_done", 0)), exec_per_sec=float(st.get("execs_per_sec", 0)),
                              coverage=st.get("bitmap_cvg", ""), corpus=int(st.get("corpus_count", 0)),
                              findings=len(self.finding_files()))

    def finding_files(self):
        if self.engine in LIBFUZZER_ENGINES:
            return sorted(glob.glob(os.path.join(self.crashes, "crash-*")) +
                          glob.glob(os.path.join(self.crashes, "leak-*")) +
                          glob.glob(os.path.join(self.crashes, "timeout-*")))
        afl_out = os.path.join(os.path.dirname(self.dir), self.target, "afl")
        return sorted(f for f in glob.glob(os.path.join(afl_out, self.role, "crashes", "id:*")))

    def merge_back(self):
        """Merges this run's corpus into the accumulated one (coverage-adding inputs only)."""
        if not self.corpus_dir or self.engine not in LIBFUZZER_ENGINES:
            return 0
        dest = os.path.join(self.corpus_dir, self.target)
        os.makedirs(dest, exist_ok=True)
        before = len(os.listdir(dest))
        subprocess.run([self.binary, "-merge=1", "-timeout=20", "-rss_limit_mb=4096", dest, self.corpus],
                       cwd=self.dir, capture_output=True, timeout=1800, env=engine_env(self.engine))
        return len(os.listdir(dest)) - before


def engine_env(engine):
    return dict(os.environ, TSAN_OPTIONS=TSAN_OPTIONS) if engine == "tsan" else None


def reproducer(bins, engine, target):
    """The libFuzzer binary that replays a finding: the engine's own (a TSan
    finding needs the TSan build), else the ASan one (AFL++ findings)."""
    if engine in LIBFUZZER_ENGINES and (engine, target) in bins:
        return bins[(engine, target)]
    return bins.get(("libfuzzer", target))


def stack_key(text):
    """Top three frames inside hakmem's sources (function and file), or the
    first error line with addresses and numbers normalized."""
    frames = re.findall(r"#\d+ 0x[0-9a-f]+ in (\S+) (\S+?)(?::\d+)*(?:\s|$)", text)
    ours = [f"{fn}@{os.path.basename(src)}" for fn, src in frames if "/src/" in src or "/verify/" in src or "/fuzz/" in src
            or src.endswith(".c")]
    if ours:
        return " < ".join(ours[:3])
    first = next((l for l in text.splitlines() if "ERROR" in l or "shadow heap" in l or "fuzz:" in l or "abort" in l
                  or "hakmem:" in l or "trace:" in l), "")
    first = re.sub(r"0x[0-9a-f]+", "ADDR", first.strip())
    return re.sub(r"\d+", "N", first)[:160] or "unknown"


def triage(runs, bins, out):
    findings = {}
    for r in runs:
        lf = reproducer(bins, r.engine, r.target)
        for path in r.finding_files():
            if lf is None:
                key = "unreproduced " + os.path.basename(path)
                text = ""
            else:
                p = subprocess.run([lf, path], capture_output=True, text=True, errors="replace", timeout=300,
                                   env=engine_env(r.engine))
                text = p.stdout + p.stderr
                if p.returncode == 0:  # does not reproduce alone: reported as flaky, input kept
                    key = "flaky (does not reproduce alone) " + os.path.basename(path)
                else:
                    key = stack_key(text)
            findings.setdefault((r.target, key), []).append((path, r.engine, text))
    results = []
    for n, ((target, key), items) in enumerate(sorted(findings.items())):
        fdir = os.path.join(out, "findings", f"{target}-{n}")
        os.makedirs(fdir, exist_ok=True)
        path, engine, text = min(items, key=lambda it: os.path.getsize(it[0]))
        lf = reproducer(bins, engine, target)
        minimized = os.path.join(fdir, "input")
        shutil.copy(path, minimized)
        if lf:
            subprocess.run([lf, "-minimize_crash=1", "-max_total_time=60", f"-exact_artifact_path={minimized}", path],
                           capture_output=True, timeout=600, env=engine_env(engine))
            if not os.path.exists(minimized):
                shutil.copy(path, minimized)
        with open(os.path.join(fdir, "log.txt"), "w") as f:
            f.write(text)
        repro = f"bazel build //fuzz:{target} && bazel-bin/fuzz/{target} {os.path.abspath(minimized)}"
        if engine == "tsan":
            repro = (f"bazel build --config=libfuzzer_tsan //fuzz:{target} && TSAN_OPTIONS={TSAN_OPTIONS} "
                     f"$(bazel info --config=libfuzzer_tsan bazel-bin)/fuzz/{target} {os.path.abspath(minimized)}")
        if target in TRACE_TARGETS and lf:
            trace = os.path.join(fdir, "trace.txt")
            subprocess.run([lf, minimized], env=dict(os.environ, HAKMEM_TRACE_OUT=trace), capture_output=True,
                           timeout=300)
            repro += f"\n# or, without the fuzzer: bazel run //verify:replay -- {os.path.abspath(trace)}"
        with open(os.path.join(fdir, "repro.sh"), "w") as f:
            f.write("#!/bin/sh\n" + repro + "\n")
        results.append({"target": target, "stack": key, "engine": engine, "count": len(items),
                        "input": minimized, "repro": repro})
    return results


def write_summary(out, runs, findings, elapsed, interrupted):
    per = [{"target": r.target, "engine": r.engine, **r.stats} for r in runs]
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"elapsed_s": round(elapsed), "interrupted": interrupted, "targets": per, "findings": findings},
                  f, indent=1)
    lines = ["# hakmem fuzzing campaign", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {elapsed / 60:.1f} minutes"
             f"{' (interrupted)' if interrupted else ''}, {len(runs)} target runs.", "",
             "| target | engine | execs | exec/s | corpus | coverage | findings |",
             "|---|---|---:|---:|---:|---|---:|"]
    for p in per:
        lines.append(f"| {p['target']} | {p['engine']} | {p['execs']:,} | {p['exec_per_sec']:,.0f} | {p['corpus']} | "
                     f"{p['coverage']} | {p['findings']} |")
    lines += ["", f"## Findings ({len(findings)} distinct stacks)", ""]
    for fnd in findings:
        lines += [f"- **{fnd['target']}** ({fnd['engine']}, {fnd['count']} inputs): `{fnd['stack']}`",
                  f"  - input: `{fnd['input']}`", "  - repro: `" + fnd["repro"].splitlines()[0] + "`"]
    if not findings:
        lines.append("None.")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--hours", type=float)
    g.add_argument("--minutes", type=float)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--engine", choices=["libfuzzer", "afl", "both"], default="both")
    ap.add_argument("--targets", help="comma-separated subset")
    ap.add_argument("--corpus", help="accumulated corpus directory (DIR/<target>), read and grown")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    total = (args.hours * 3600 if args.hours else args.minutes * 60)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    engines = ["libfuzzer", "afl"] if args.engine == "both" else [args.engine]
    names = args.targets.split(",") if args.targets else targets()
    started = time.time()
    bins = build(out, engines)
    corpus = os.path.abspath(args.corpus) if args.corpus else None
    pairs = [(e, t, "main") for t in names for e in engines]
    if "libfuzzer" in engines:
        pairs += [("tsan", t, "main") for t in names if t in TSAN_TARGETS]
    if "afl" in engines and args.jobs >= 2:
        pairs += [("afl", t, "sec1") for t in names]  # a secondary instance on the same queue
    budget = max(10, total - (time.time() - started))
    slice_s = max(10, int(budget * args.jobs / len(pairs)))
    log(f"{len(pairs)} runs of {slice_s} s each, {args.jobs} at a time")
    runs = [Run(e, t, bins[(e, t)], out, slice_s, corpus, role) for e, t, role in pairs]
    interrupted = False

    def on_sigint(signum, frame):
        nonlocal interrupted
        interrupted = True
        log("interrupted: stopping the fuzzers, keeping what they found")
    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigint)

    pending = list(runs)
    active = []
    last = 0.0
    while (pending or active) and not interrupted:
        active = [r for r in active if r.running() or (r.update() and False)]
        while pending and len(active) < args.jobs:
            r = pending.pop(0)
            r.start()
            active.append(r)
            log(f"started {r.engine} {r.target}")
        if time.time() - last >= 60:
            last = time.time()
            for r in runs:
                r.update()
            for r in active:
                s = r.stats
                log(f"{r.engine:9s} {r.target:18s} {s['execs']:>10,} execs {s['exec_per_sec']:>8,.0f}/s "
                    f"cov {s['coverage'] or '-'} corpus {s['corpus']} findings {s['findings']}")
        time.sleep(1)
    for r in runs:
        r.stop()
        r.update()
    if corpus:
        for r in runs:
            added = r.merge_back()
            if added:
                log(f"corpus {r.target}: +{added} inputs merged into {corpus}/{r.target}")
    log("triage: reproducing, deduplicating and minimizing findings")
    findings = triage(runs, bins, out)
    write_summary(out, runs, findings, time.time() - started, interrupted)
    log(f"wrote {out}/summary.md and summary.json: {len(findings)} distinct findings")
    with open(os.path.join(out, "summary.md")) as f:
        print(f.read())
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
