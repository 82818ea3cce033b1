#!/usr/bin/env python3
"""Checks the GitHub Actions workflows without GitHub:
    ci/check_workflows.py [--root DIR] [WORKFLOW...]
(default: every DIR/.github/workflows/*.yml and *.yaml, DIR = the repo).
Each must parse as YAML with `on:` and a non-empty `jobs:`, every job needs
`runs-on:` or `uses:`, every step `run:` or `uses:`; every repo path a `run:`
step names (ci/..., .ci/..., fuzz/..., verify/..., ...) and every local
`uses: ./...` must exist under DIR.  Prints one line per problem; exits 1 if
there is one."""
import argparse
import glob
import os
import re
import sys

import yaml

# top-level directories a run: step may name; a word that starts with one of
# them followed by '/' is taken as a path (not after '/', '.', '$' or a letter:
# //src:all, $OUT/ci, https://x/ci/y are not repo paths)
REPO_DIRS = r"(?:\.ci|ci|fuzz|verify|src|stress|third_party|\.clusterfuzzlite|\.github)"
PATH_RE = re.compile(r"(?<![\w./$-])(" + REPO_DIRS + r"/[\w./+-]*[\w+-]|" + REPO_DIRS + r"/)")
# spellings of the checkout's root that a path may start with
ROOT_RE = re.compile(r"\$\{\{\s*github\.workspace\s*\}\}/|\$\{?GITHUB_WORKSPACE\}?/|(?<![\w./$-])\./")


def repo_paths(script):
    """The repo paths a run: script names (comments ignored)."""
    text = "\n".join(line.split(" #")[0] for line in script.splitlines()
                     if not line.lstrip().startswith("#"))
    return [p.rstrip("/") for p in PATH_RE.findall(ROOT_RE.sub("", text))]


def check(path, root):
    """Problems of one workflow file, and how many repo paths it names."""
    name = os.path.relpath(path, root)
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        return [f"{name}: does not parse as YAML: {e}"], 0
    if not isinstance(doc, dict):
        return [f"{name}: not a mapping at the top level"], 0
    problems, count = [], 0
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean true
    if "on" not in doc and True not in doc:
        problems.append(f"{name}: no `on:` (nothing triggers it)")
    jobs = doc.get("jobs")
    if not isinstance(jobs, dict) or not jobs:
        return problems + [f"{name}: no `jobs:`"], 0
    for job_id, job in jobs.items():
        where = f"{name}: job {job_id}"
        if not isinstance(job, dict):
            problems.append(f"{where}: not a mapping")
            continue
        if "uses" in job:  # a reusable workflow
            ref = job["uses"]
            if ref.startswith("./") and not os.path.exists(os.path.join(root, ref)):
                problems.append(f"{where}: uses {ref}, which does not exist")
            continue
        if "runs-on" not in job:
            problems.append(f"{where}: no `runs-on:`")
        steps = job.get("steps")
        if not isinstance(steps, list) or not steps:
            problems.append(f"{where}: no `steps:`")
            continue
        for i, step in enumerate(steps, 1):
            label = f"{where}, step {i}" + (f" ({step['name']})" if isinstance(step, dict) and "name" in step else "")
            if not isinstance(step, dict) or ("run" not in step and "uses" not in step):
                problems.append(f"{label}: neither `run:` nor `uses:`")
                continue
            ref = step.get("uses", "")
            if ref.startswith("./") and not os.path.exists(os.path.join(root, ref)):
                problems.append(f"{label}: uses {ref}, which does not exist")
            base = os.path.join(root, step.get("working-directory", ""))
            for p in repo_paths(str(step.get("run", ""))):
                count += 1
                if not os.path.exists(os.path.join(base, p)):
                    problems.append(f"{label}: runs {p}, which is not in the repo")
    return problems, count


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.dirname(here), help="the repo's root")
    ap.add_argument("workflows", nargs="*")
    args = ap.parse_args()
    files = args.workflows or sorted(glob.glob(os.path.join(args.root, ".github/workflows/*.y*ml")))
    if not files:
        print(f"check_workflows: no workflow under {args.root}/.github/workflows", file=sys.stderr)
        return 1
    problems, count = [], 0
    for f in files:
        p, n = check(f, args.root)
        problems += p
        count += n
    for p in problems:
        print(f"check_workflows: {p}", file=sys.stderr)
    print(f"check_workflows: {len(files)} workflows, {count} repo paths in run steps, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
