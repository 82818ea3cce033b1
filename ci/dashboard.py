#!/usr/bin/env python3
"""The nightly dashboard: one static page from the history database.

  ci/dashboard.py --state DIR --out DIR [--nights N]

Writes OUT/index.html: no server, no network, everything inline.  At the
top the last night's verdicts (failing ones first, each linking to that
night's report.md); then trend charts over the last N nights (default 60):
per scenario hakmem's median latency and peak RSS over the best peer's of
the same night, fuzz coverage and exec/s per target, findings and failed
stages per night.  Every point links to its night's report; a night on a
different machine than the one before it is drawn hollow and named in the
tooltip (its numbers are not comparable).  The charts are SVG drawn by a
small script from the data embedded in the page; a script error is shown
on the page (and in body[data-error], which ci/dashboard_test.sh checks).
"""
import argparse
import json
import os
import sqlite3
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import history  # noqa: E402  (the schema and the metric names)

PEERS = ("system", "mimalloc", "jemalloc", "tcmalloc")
HAKMEM = ("hakmem-baseline", "hakmem-evolving")


def collect(db, out, limit):
    nights = db.execute("SELECT id, started, commit_sha, quick, machine, passed, report_dir FROM nights "
                        "ORDER BY id DESC LIMIT ?", (limit,)).fetchall()[::-1]
    data = {"nights": [], "series": {}, "verdicts": [], "last": None}
    prev_machine = None
    for nid, started, commit, quick, machine, passed, rdir in nights:
        report = os.path.join(rdir, "report.md")
        counts = dict(db.execute("SELECT verdict, COUNT(*) FROM verdicts WHERE night=? GROUP BY verdict", (nid,)))
        failing = sum(counts.get(v, 0) for v in history.FAILING)
        data["nights"].append({"id": nid, "started": started, "commit": (commit or "")[:10], "quick": bool(quick),
                               "machine": machine, "new_machine": prev_machine is not None and machine != prev_machine,
                               "passed": bool(passed), "failing": failing, "counts": counts,
                               "report": os.path.relpath(report, out)})
        prev_machine = machine
    ids = [n["id"] for n in data["nights"]]

    def put(chart, name, nid, value):
        data["series"].setdefault(chart, {}).setdefault(name, {})[str(nid)] = value

    for nid in ids:
        med = {}
        for sc, alloc, metric, v in db.execute("SELECT scenario, allocator, metric, value FROM bench WHERE night=?",
                                               (nid,)):
            med.setdefault((sc, metric), {}).setdefault(alloc, []).append(v)
        for (sc, metric), per in med.items():
            if metric not in ("latency_ns", "rss_kib"):
                continue
            peers = [statistics.median(per[p]) for p in PEERS if p in per]
            if not peers or min(peers) <= 0:
                continue
            best = min(peers)
            for h in HAKMEM:
                if h in per:
                    put(f"{'latency' if metric == 'latency_ns' else 'rss'}:{sc}", h, nid,
                        statistics.median(per[h]) / best)
        for target, engine, execs, eps, cov in db.execute(
                "SELECT target, engine, execs, exec_per_sec, coverage FROM fuzz WHERE night=?", (nid,)):
            put("fuzz:coverage", f"{target}/{engine}", nid, cov)
            put("fuzz:exec_per_sec", f"{target}/{engine}", nid, eps)
        put("night:findings", "findings", nid,
            db.execute("SELECT COUNT(*) FROM findings WHERE night=?", (nid,)).fetchone()[0])
        put("night:failed_stages", "failed stages", nid,
            db.execute("SELECT COUNT(*) FROM stages WHERE night=? AND status!='pass'", (nid,)).fetchone()[0])
        put("night:regressions", "regressions", nid,
            db.execute("SELECT COUNT(*) FROM verdicts WHERE night=? AND verdict='regression'", (nid,)).fetchone()[0])
    if ids:
        last = ids[-1]
        data["last"] = last
        order = {"regression": 0, "fail": 0, "finding": 0, "improvement": 1, "noisy": 2, "no-baseline": 3, "pass": 4}
        rows = db.execute("SELECT kind, subject, metric, verdict, detail FROM verdicts WHERE night=?", (last,)).fetchall()
        rows.sort(key=lambda r: (order.get(r[3], 5), r[0], r[1], r[2]))
        data["verdicts"] = [{"kind": k, "subject": s, "metric": m, "verdict": v, "detail": d} for k, s, m, v, d in rows]
    return data


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hakmem nightly</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { margin: 0 0 .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
.v-regression, .v-fail, .v-finding { color: #b00; font-weight: bold; }
.v-improvement { color: #070; font-weight: bold; } .v-noisy { color: #a60; } .v-no-baseline { color: #666; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.chart { border: 1px solid #ddd; background: #fff; }
.legend { font-size: 11px; } #error { color: #b00; font-weight: bold; }
details > summary { cursor: pointer; }
</style></head>
<body>
<h1>hakmem nightly</h1>
<div id="error"></div>
<div id="head"></div>
<h2>Verdicts of the last night</h2>
<div id="verdicts"></div>
<h2>Benchmark: hakmem's median latency over the best peer's, per scenario</h2>
<div class="charts" id="latency"></div>
<h2>Benchmark: hakmem's peak RSS over the best peer's, per scenario</h2>
<div class="charts" id="rss"></div>
<h2>Fuzzing</h2>
<div class="charts" id="fuzz"></div>
<h2>Nights</h2>
<div class="charts" id="night"></div>
<div id="nights"></div>
<script>
window.onerror = function (msg, src, line) {
  document.body.dataset.error = msg + " (line " + line + ")";
  document.getElementById("error").textContent = "dashboard script error: " + msg + " (line " + line + ")";
};
const DATA = __DATA__;
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
                "#7f7f7f", "#bcbd22", "#393b79", "#637939"];
function el(tag, attrs, parent) {
  const e = document.createElementNS(SVG, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function html(tag, text, parent, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}
const nights = DATA.nights, byId = {};
nights.forEach((n, i) => { byId[n.id] = Object.assign({index: i}, n); });

function chart(parent, title, series, opts) {
  const W = 420, H = 220, L = 48, R = 10, T = 24, B = 30;
  const svg = el("svg", {width: W, height: H, class: "chart", "data-chart": title}, parent);
  el("text", {x: L, y: 15, "font-size": 12, "font-weight": "bold"}, svg).textContent = title;
  const names = Object.keys(series);
  let lo = Infinity, hi = -Infinity;
  names.forEach(s => Object.values(series[s]).forEach(v => { lo = Math.min(lo, v); hi = Math.max(hi, v); }));
  if (opts.one) { lo = Math.min(lo, 1); hi = Math.max(hi, 1); }
  if (opts.zero) lo = Math.min(lo, 0);
  if (!(hi > lo)) { hi = lo + 1; }
  const pad = (hi - lo) * 0.08; lo = opts.zero && lo >= 0 ? Math.max(0, lo - pad) : lo - pad; hi += pad;
  const n = Math.max(nights.length - 1, 1);
  const x = i => L + (W - L - R) * (nights.length === 1 ? 0.5 : i / n);
  const y = v => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  el("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#999"}, svg);
  el("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999"}, svg);
  for (let k = 0; k <= 4; k++) {
    const v = lo + (hi - lo) * k / 4;
    el("text", {x: L - 4, y: y(v) + 4, "font-size": 10, "text-anchor": "end"}, svg).textContent =
      Math.abs(v) >= 1000 ? Math.round(v).toLocaleString() : v.toFixed(2);
    el("line", {x1: L, y1: y(v), x2: W - R, y2: y(v), stroke: "#eee"}, svg);
  }
  if (opts.one) el("line", {x1: L, y1: y(1), x2: W - R, y2: y(1), stroke: "#888", "stroke-dasharray": "4 3"}, svg);
  nights.forEach((nt, i) => {
    if (i % Math.ceil(nights.length / 8) === 0 || i === nights.length - 1)
      el("text", {x: x(i), y: H - B + 14, "font-size": 10, "text-anchor": "middle"}, svg).textContent = "#" + nt.id;
    if (nt.new_machine) el("line", {x1: x(i), y1: T, x2: x(i), y2: H - B, stroke: "#c90", "stroke-dasharray": "2 2"}, svg);
  });
  names.forEach((s, si) => {
    const color = COLORS[si % COLORS.length];
    const pts = Object.keys(series[s]).map(Number).filter(id => id in byId).sort((a, b) => byId[a].index - byId[b].index);
    if (pts.length > 1)
      el("polyline", {fill: "none", stroke: color, "stroke-width": 1.5,
                      points: pts.map(id => x(byId[id].index) + "," + y(series[s][id])).join(" ")}, svg);
    pts.forEach(id => {
      const nt = byId[id], v = series[s][id];
      const a = el("a", {href: nt.report, "data-night": id}, svg);
      const c = el("circle", {cx: x(nt.index), cy: y(v), r: 3.5, class: "point",
                              fill: nt.new_machine ? "#fff" : color, stroke: color}, a);
      el("title", {}, c).textContent = s + ", night #" + id + " (" + nt.started + ", " + nt.commit + "): " +
        (Math.abs(v) >= 1000 ? Math.round(v).toLocaleString() : v.toFixed(3)) +
        (nt.new_machine ? " - on another machine: not comparable" : "");
    });
    el("text", {x: L + 4 + 130 * (si % 3), y: T + 10 + 11 * Math.floor(si / 3), "font-size": 10, fill: color,
                class: "legend"}, svg).textContent = s;
  });
  return svg;
}

function head() {
  const h = document.getElementById("head");
  if (!nights.length) { html("p", "No night recorded yet.", h); return; }
  const last = byId[DATA.last];
  const p = html("p", "", h);
  p.appendChild(document.createTextNode("Last night #" + last.id + ", " + last.started + ", commit " + last.commit +
    (last.quick ? " (quick)" : "") + ", " + last.machine + ": "));
  const bad = last.failing || !last.passed;
  const b = html("b", last.failing ? last.failing + " failing verdict(s)" : !last.passed ? "a stage failed"
                 : "no regression, no finding, every stage passed", p, bad ? "v-fail" : "v-improvement");
  p.appendChild(document.createTextNode(" - "));
  const a = html("a", "report", p); a.href = last.report;
}

function verdicts() {
  const d = document.getElementById("verdicts");
  const shown = DATA.verdicts.filter(v => v.verdict !== "pass");
  const t = html("table", undefined, d);
  const hr = html("tr", undefined, t);
  ["verdict", "kind", "subject", "metric", "detail"].forEach(c => html("th", c, hr));
  const add = v => {
    const r = html("tr", undefined, t, "verdict");
    html("td", v.verdict, r, "v-" + v.verdict); html("td", v.kind, r); html("td", v.subject, r);
    html("td", v.metric, r); html("td", v.detail, r);
  };
  shown.forEach(add);
  const passed = DATA.verdicts.filter(v => v.verdict === "pass");
  const det = html("details", undefined, d);
  html("summary", passed.length + " passing verdicts", det);
  const t2 = html("table", undefined, det);
  passed.forEach(v => { const r = html("tr", undefined, t2, "verdict");
    html("td", v.verdict, r, "v-pass"); html("td", v.kind, r); html("td", v.subject, r); html("td", v.metric, r);
    html("td", v.detail, r); });
}

function charts() {
  const groups = {latency: [], rss: [], fuzz: [], night: []};
  Object.keys(DATA.series).sort().forEach(k => groups[k.split(":")[0]].push(k));
  groups.latency.forEach(k => chart(document.getElementById("latency"), k.split(":")[1] + ": latency / best peer",
                                     DATA.series[k], {one: true}));
  groups.rss.forEach(k => chart(document.getElementById("rss"), k.split(":")[1] + ": peak RSS / best peer",
                                 DATA.series[k], {one: true}));
  groups.fuzz.forEach(k => chart(document.getElementById("fuzz"), k === "fuzz:coverage" ? "coverage (edges) per target"
                                  : "exec/s per target", DATA.series[k], {zero: true}));
  groups.night.forEach(k => chart(document.getElementById("night"), k.split(":")[1].replace("_", " ") + " per night",
                                   DATA.series[k], {zero: true}));
}

function nightsTable() {
  const t = html("table", undefined, document.getElementById("nights"));
  const hr = html("tr", undefined, t);
  ["night", "started", "commit", "machine", "stages", "failing verdicts", "report"].forEach(c => html("th", c, hr));
  nights.slice().reverse().forEach(n => {
    const r = html("tr", undefined, t);
    html("td", "#" + n.id + (n.quick ? " (quick)" : ""), r); html("td", n.started, r); html("td", n.commit, r);
    html("td", n.machine + (n.new_machine ? " (changed)" : ""), r, n.new_machine ? "v-noisy" : "");
    html("td", n.passed ? "passed" : "FAILED", r, n.passed ? "" : "v-fail");
    html("td", String(n.failing), r, n.failing ? "v-fail" : "");
    const a = html("a", "report.md", html("td", undefined, r)); a.href = n.report;
  });
}
head(); verdicts(); charts(); nightsTable();
document.body.dataset.rendered = "yes";
</script>
</body></html>
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", required=True, help="the nightly state folder (history.db)")
    ap.add_argument("--out", required=True, help="where index.html goes")
    ap.add_argument("--nights", type=int, default=60)
    args = ap.parse_args()
    path = os.path.join(args.state, "history.db")
    if not os.path.exists(path):
        raise SystemExit(f"dashboard: no history in {args.state} (ci/nightly.sh --state {args.state} makes one)")
    db = history.connect(args.state)
    os.makedirs(args.out, exist_ok=True)
    data = collect(db, os.path.abspath(args.out), args.nights)
    # no markup can come out of the data (</script>, <!--): JSON escapes
    blob = json.dumps(data, sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    with open(os.path.join(args.out, "index.html"), "w") as f:
        f.write(PAGE.replace("__DATA__", blob))
    print(f"dashboard: {args.out}/index.html ({len(data['nights'])} nights, {len(data['series'])} charts)")


if __name__ == "__main__":
    main()
