#!/usr/bin/env python3
"""Tests of the nightly history, its gate and the dashboard.

Synthetic nights (report.json as ci/nightly.sh writes them) are recorded in
a fresh history.db: an unchanged night must pass, a night with hakmem 20 %
slower (or using 20 % more memory) must be flagged as a regression, noise
beyond the threshold without significance must be "noisy", a night on
another machine must not be compared, a new fuzz finding must fail the
night.  Then ci/dashboard.py draws the page and headless Chromium (Debian's
chromium) renders it: the page's script must run without error and draw
every chart with one linked point per night and series.
"""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import history  # noqa: E402

SCENARIOS = ("small", "mid")
PEERS = ("system", "mimalloc", "jemalloc", "tcmalloc")
MACHINE = ("Test CPU 3000", "6.1.0-test", 2)


def night_doc(rng, slow=1.0, fat=1.0, noise=0.01, findings=(), stage_fail=False, runs=5, machine_noise=0.0,
              fault=None, bench=True):
    results = {}
    # the machine's speed per round, shared by every allocator of the round
    rounds = [1 + abs(rng.gauss(0, machine_noise)) for _ in range(runs)]
    for sc in SCENARIOS:
        rows = {}
        base = {"small": 14.0, "mid": 80.0}[sc]
        for alloc, f in [("system", 1.3), ("mimalloc", 1.0), ("jemalloc", 1.1), ("tcmalloc", 0.8),
                         ("hakmem-baseline", 1.05), ("hakmem-evolving", 1.07)]:
            k = (slow if alloc.startswith("hakmem") else 1.0)
            m = (fat if alloc.startswith("hakmem") else 1.0)
            lat = [base * f * k * rounds[i] * (1 + rng.gauss(0, noise)) for i in range(runs)]
            rss = [50000 * f * m * (1 + rng.gauss(0, noise / 2)) for _ in range(runs)]
            pf = [12000 * f * m * (1 + rng.gauss(0, noise / 2)) for _ in range(runs)]
            rows[alloc] = {"latency_ns": sorted(lat)[runs // 2], "samples_ns": sorted(lat), "runs_ns": lat,
                           "samples_rss_kib": rss,
                           "samples_soft_pf": pf, "min_ns": min(lat)}
        results[sc] = rows
    fuzz = {"targets": [{"target": t, "engine": "libfuzzer", "execs": 100000, "exec_per_sec": 300 + rng.random() * 50,
                         "corpus": 40, "coverage": 2400 + rng.randint(0, 30), "findings": 0}
                        for t in ("api_fuzzer", "misuse_fuzzer")],
            "findings": [{"target": "api_fuzzer", "engine": "libfuzzer", "stack": s} for s in findings]}
    stages = [{"stage": "sanitizer-asan", "status": "fail" if stage_fail else "pass", "seconds": 300, "log": "x.log"},
              {"stage": "bench", "status": "pass", "seconds": 200, "log": "bench.log"}]
    return {"quick": True, "seconds": 900, "passed": not stage_fail, "stages": stages, "hakmem_fault": fault,
            "bench": {"results": results} if bench else {}, "fuzz": fuzz}


class Nights:
    """A state folder and night folders, recorded and gated one by one."""

    def __init__(self, root):
        self.root = root
        self.state = os.path.join(root, "state")
        self.db = history.connect(self.state)
        self.n = 0

    def add(self, doc, machine=MACHINE):
        self.n += 1
        d = os.path.join(self.root, f"night-{self.n}")
        os.makedirs(d)
        with open(os.path.join(d, "report.json"), "w") as f:
            json.dump(doc, f)
        with open(os.path.join(d, "report.md"), "w") as f:
            f.write(f"# night {self.n}\n")
        night = history.ingest(self.db, d, commit=f"{self.n:040x}", machine=machine,
                               started=f"2026-11-{self.n:02d}T02:00:00Z")
        verdicts, base = history.gate(self.db, night, last=5, alpha=0.01)
        history.write_verdicts(d, night, verdicts, base, 0.01, 5)
        return night, verdicts

    @staticmethod
    def pick(verdicts, subject, metric):
        return [v["verdict"] for v in verdicts if v["subject"] == subject and v["metric"] == metric][0]


class StatisticsTest(unittest.TestCase):
    def test_exact_mann_whitney(self):
        self.assertAlmostEqual(history.mann_whitney_greater([4, 5, 6], [1, 2, 3]), 1 / 20)
        self.assertAlmostEqual(history.mann_whitney_greater([1, 2, 3], [4, 5, 6]), 1.0)
        self.assertAlmostEqual(history.mann_whitney_greater(list(range(6, 11)), list(range(1, 6))), 1 / 252)
        # U distribution sums to C(n+m, n)
        self.assertEqual(sum(history.u_distribution(4, 7)), 330)

    def test_ties_use_the_normal_approximation(self):
        p = history.mann_whitney_greater([2, 2, 3, 3, 3], [1, 1, 2, 2, 2])
        self.assertTrue(0 < p < 0.05, p)
        self.assertGreater(history.mann_whitney_greater([1, 1, 1], [1, 1, 1]), 0.4)

    def test_verdicts(self):
        base = [1.0, 1.01, 0.99, 1.0, 1.02]
        self.assertEqual(history.verdict_of([1.2, 1.21, 1.19, 1.22, 1.18], base, 0.03, 0.01)[0], "regression")
        self.assertEqual(history.verdict_of([0.8, 0.81, 0.79, 0.82, 0.78], base, 0.03, 0.01)[0], "improvement")
        self.assertEqual(history.verdict_of([1.001, 1.0, 0.995, 1.01, 0.99], base, 0.03, 0.01)[0], "pass")
        # the median moved 10 % but one sample of each overlaps: not established
        self.assertEqual(history.verdict_of([1.15, 0.95, 1.3, 1.1], [1.0, 1.05, 0.92, 1.2], 0.03, 0.01)[0], "noisy")


class GateTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.nights = Nights(self.tmp)
        self.rng = random.Random(7)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def test_unchanged_night_passes_and_slower_night_is_flagged(self):
        _, first = self.nights.add(night_doc(self.rng))
        self.assertTrue(all(v["verdict"] in ("no-baseline", "pass") for v in first))
        _, same = self.nights.add(night_doc(self.rng))
        bench = [v for v in same if v["kind"] == "bench"]
        self.assertEqual(len(bench), len(SCENARIOS) * 2 * 3)
        self.assertEqual({v["verdict"] for v in bench}, {"pass"}, [v["detail"] for v in bench if v["verdict"] != "pass"])
        night, slow = self.nights.add(night_doc(self.rng, slow=1.2))
        self.assertEqual(self.nights.pick(slow, "small/hakmem-baseline", "latency_ns"), "regression")
        self.assertEqual(self.nights.pick(slow, "mid/hakmem-evolving", "latency_ns"), "regression")
        self.assertEqual(self.nights.pick(slow, "mid/hakmem-evolving", "rss_kib"), "pass")
        with open(os.path.join(self.tmp, f"night-{self.nights.n}", "verdicts.json")) as f:
            out = json.load(f)
        self.assertTrue(out["failed"])
        self.assertIn("Mann-Whitney", out["test"])
        with open(os.path.join(self.tmp, f"night-{self.nights.n}", "verdicts.md")) as f:
            md = f.read()
        self.assertIn("| REGRESSION | bench | small/hakmem-baseline | latency_ns |", md)
        # a regressed night is no baseline: the next normal night passes against the good ones
        _, after = self.nights.add(night_doc(self.rng))
        self.assertNotIn(night, history.good_nights(self.nights.db, night + 1, 5))
        self.assertEqual({v["verdict"] for v in after if v["kind"] == "bench"}, {"pass"})

    def test_a_slow_moment_of_the_machine_cancels_by_round(self):
        # rounds up to ~2x slower for every allocator alike: paired by round, nothing moves
        for _ in range(3):
            _, v = self.nights.add(night_doc(self.rng, machine_noise=0.5))
        self.assertEqual({x["verdict"] for x in v if x["kind"] == "bench" and x["metric"] == "latency_ns"}, {"pass"})
        _, slow = self.nights.add(night_doc(self.rng, machine_noise=0.5, slow=1.1))
        self.assertEqual(self.nights.pick(slow, "mid/hakmem-baseline", "latency_ns"), "regression")

    def test_fault_nights_and_benchless_nights_are_no_baseline_accepted_nights_are(self):
        first, _ = self.nights.add(night_doc(self.rng))
        fault, _ = self.nights.add(night_doc(self.rng, slow=3.0, fault="slow_malloc"))
        for _ in range(6):  # nights that ran no benchmark use up no baseline slot
            self.nights.add(night_doc(self.rng, bench=False))
        regressed, v = self.nights.add(night_doc(self.rng, slow=1.2))
        self.assertEqual(self.nights.pick(v, "small/hakmem-baseline", "latency_ns"), "regression")
        cell = ("small", "hakmem-baseline", "latency_ns")
        self.assertEqual(history.good_nights(self.nights.db, regressed, 5, cell), [first])
        # the change was intended: accepted, the next nights compare with it
        self.nights.db.execute("UPDATE nights SET accepted=1 WHERE id=?", (regressed,))
        _, after = self.nights.add(night_doc(self.rng, slow=1.2))
        self.assertIn(regressed, history.good_nights(self.nights.db, regressed + 1, 5, cell))
        self.assertEqual(self.nights.pick(after, "small/hakmem-baseline", "latency_ns"), "pass")

    def test_memory_growth_is_gated(self):
        self.nights.add(night_doc(self.rng))
        _, fat = self.nights.add(night_doc(self.rng, fat=1.2))
        self.assertEqual(self.nights.pick(fat, "small/hakmem-baseline", "rss_kib"), "regression")
        self.assertEqual(self.nights.pick(fat, "small/hakmem-baseline", "soft_pf"), "regression")
        self.assertEqual(self.nights.pick(fat, "small/hakmem-baseline", "latency_ns"), "pass")

    def test_noise_is_not_a_regression(self):
        self.nights.add(night_doc(self.rng, noise=0.15))
        _, noisy = self.nights.add(night_doc(self.rng, noise=0.15, slow=1.06))
        self.assertNotIn("regression", {v["verdict"] for v in noisy if v["kind"] == "bench"})

    def test_another_machine_is_not_compared(self):
        self.nights.add(night_doc(self.rng))
        _, other = self.nights.add(night_doc(self.rng, slow=1.5), machine=("Other CPU", "6.1.0-test", 8))
        self.assertIn("no-baseline", {v["verdict"] for v in other if v["kind"] == "machine"})
        self.assertNotIn("regression", {v["verdict"] for v in other})

    def test_new_finding_and_failed_stage_fail_the_night(self):
        self.nights.add(night_doc(self.rng, findings=["old_stack"]))
        _, v = self.nights.add(night_doc(self.rng, findings=["old_stack", "new_stack"], stage_fail=True))
        verdicts = {(x["kind"], x["subject"], x["detail"].split(":")[0], x["verdict"]) for x in v}
        self.assertIn(("fuzz", "api_fuzzer", "new", "finding"), verdicts)
        self.assertIn(("fuzz", "api_fuzzer", "known since an earlier night", "pass"), verdicts)
        self.assertIn("fail", {x["verdict"] for x in v if x["subject"] == "sanitizer-asan"})

    def test_fuzz_rows_are_one_per_target_and_engine(self):
        doc = night_doc(self.rng)
        doc["fuzz"]["targets"] += [
            {"target": "api_fuzzer", "engine": "afl", "execs": 1000, "exec_per_sec": 100, "corpus": 90,
             "coverage": "21.21%", "findings": 0},
            {"target": "api_fuzzer", "engine": "afl", "execs": 0, "exec_per_sec": 0, "corpus": 0, "coverage": "",
             "findings": 0}]
        night, _ = self.nights.add(doc)
        rows = self.nights.db.execute("SELECT execs, coverage, corpus FROM fuzz WHERE night=? AND target='api_fuzzer' "
                                      "AND engine='afl'", (night,)).fetchall()
        self.assertEqual(rows, [(1000, 21.21, 90)])
        self.assertEqual(history.coverage_number("2419 edges, 11299 features"), 2419)

    def test_schema_is_versioned(self):
        self.assertEqual(self.nights.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0],
                         str(history.SCHEMA_VERSION))


def find_chromium():
    for c in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(c)
        if p:
            return p
    return None


class DashboardTest(unittest.TestCase):
    def test_page_renders_its_charts_in_chromium(self):
        chromium = find_chromium()
        self.assertIsNotNone(chromium, "Debian's chromium is needed (ci/setup.sh installs it)")
        tmp = tempfile.mkdtemp()
        try:
            nights = Nights(tmp)
            rng = random.Random(3)
            nights.add(night_doc(rng))
            nights.add(night_doc(rng), machine=("Other CPU", "6.1", 2))
            # markup in the data (a fuzz stack, say) must not break the page
            nights.add(night_doc(rng, slow=1.2, findings=["</script><!--<script>alert(1)"]),
                       machine=("Other CPU", "6.1", 2))
            out = os.path.join(tmp, "dash")
            subprocess.run([sys.executable, os.path.join(HERE, "dashboard.py"), "--state", nights.state, "--out", out],
                           check=True)
            page = os.path.join(out, "index.html")
            with open(page) as f:
                text = f.read()
            self.assertNotRegex(text, r"(src|href)=\"https?://", "the page must not need the network")
            profile = os.path.join(tmp, "profile")
            proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                   f"--user-data-dir={profile}", "--no-first-run", "--virtual-time-budget=5000",
                                   "--dump-dom", "file://" + page], capture_output=True, text=True, timeout=120)
            dom = proc.stdout
            self.assertIn('data-rendered="yes"', dom, proc.stderr[-2000:])
            self.assertNotIn("data-error", dom)
            charts = re.findall(r'<svg[^>]*class="chart"', dom)
            # latency and RSS per scenario, coverage and exec/s, findings, failed stages, regressions
            self.assertEqual(len(charts), 2 * len(SCENARIOS) + 2 + 3, len(charts))
            points = re.findall(r'<a href="([^"]+)" data-night="(\d+)"><circle', dom)
            # per scenario chart: 2 hakmem series x 3 nights; fuzz: 2 targets x 3 nights; 3 night charts x 3
            self.assertEqual(len(points), 2 * len(SCENARIOS) * 2 * 3 + 2 * 2 * 3 + 3 * 3)
            self.assertIn("&lt;/script&gt;&lt;!--&lt;script&gt;alert(1)", dom)  # shown as text
            for href, night in points:
                self.assertTrue(os.path.exists(os.path.join(out, href)), href)
                self.assertTrue(href.endswith(f"night-{night}/report.md"), href)
            # the last night's regression heads the verdict table
            self.assertRegex(dom, r'<tr class="verdict"><td class="v-regression">regression</td>')
            # the machine change is marked: hollow points of the second night
            self.assertIn('(changed)', dom)
            shot = os.path.join(tmp, "shot.png")
            subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                            f"--user-data-dir={profile}", "--window-size=1200,2400", f"--screenshot={shot}",
                            "file://" + page], capture_output=True, timeout=120)
            self.assertGreater(os.path.getsize(shot), 20000)  # drawn, not blank
            keep = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR")
            if keep:
                shutil.copy(shot, os.path.join(keep, "dashboard.png"))
        finally:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    unittest.main()
