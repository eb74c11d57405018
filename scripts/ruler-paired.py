#!/usr/bin/env python3
"""Paired differences between policies on the samples every policy finished (RULER results.jsonl).

  scripts/ruler-paired.py RESULTS.jsonl[,MORE.jsonl#TAG,...] [BASE=lsa] [OTHERS=full,recency,random,quest,oracle]

Several files may be given, comma-separated; FILE#TAG appends TAG to the policy names of that
file's records (to pair two runs of one policy, e.g. `a.jsonl,b.jsonl#-new lsa-new lsa,full`).
A policy run at several budgets is named with its budget, POLICY@BUDGET (e.g. `lsa@20% full,lsa@14.5%`);
its plain name is refused then, rather than pairing whichever budget was read last.

Device KV is the mean over a policy's records of device bytes (mean over the decode) over the
sample's full KV, in the run's own KV type and at f16 (a q8 run records `full_kv_bytes_f16`).

Per length: the task scores of each policy averaged over the samples all policies completed, the
average over tasks, and BASE − other as the mean over tasks of the per-task mean paired
difference (samples of several seeds pooled), with a 95% interval 1.96·sqrt(Σ_t s_t²/N_t)/tasks (s_t: the sample standard
deviation of the task's paired differences), as `flashmem eval --summarize` averages tasks.
"""
import collections
import json
import math
import sys

paths = sys.argv[1].split(",")
base = sys.argv[2] if len(sys.argv) > 2 else "lsa"
others = (sys.argv[3] if len(sys.argv) > 3 else "full,recency,random,quest,oracle").split(",")
pols = [base] + others
score = {}
kv = collections.defaultdict(list)
kv16 = collections.defaultdict(list)  # device KV over the full KV at f16 (q8 runs record it)
budgets = collections.defaultdict(set)  # (length, plain policy name) -> budgets seen
for spec in paths:
    path, _, tag = spec.partition("#")
    for line in open(path):
        r = json.loads(line)
        policy = r["policy"] + tag
        budgets[(r["length"], policy)].add(r["budget"])
        # A sample is (seed, index): runs with different seeds concatenate into one file.
        for name in (policy, f"{policy}@{r['budget']}"):
            score[(r["length"], r["task"], (r.get("seed", 0), r["sample_index"]), name)] = r["score"]
            kv[(r["length"], name)].append(r["device_kv_bytes_mean"] / r["full_kv_bytes"])
            full16 = r.get("extra", {}).get("full_kv_bytes_f16") or r["full_kv_bytes"]
            kv16[(r["length"], name)].append(r["device_kv_bytes_mean"] / full16)
for (length, policy), bs in sorted(budgets.items()):
    if policy in pols and len(bs) > 1:
        sys.exit(f"ruler-paired: {policy} ran at several budgets at length {length} ({', '.join(sorted(bs))}): "
                 f"name one, e.g. {policy}@{sorted(bs)[0]}")
for length in sorted({k[0] for k in score}):
    tasks = sorted({k[1] for k in score if k[0] == length})
    done = collections.defaultdict(list)
    for (l, t, i, p) in score:
        if l == length and p == base and all((l, t, i, q) in score for q in others):
            done[t].append(i)
    n = sum(len(v) for v in done.values())
    if n == 0:
        continue
    print(f"## {length} tokens: {n} samples complete for all of {', '.join(pols)}")
    print("| policy | score | device KV / full | device KV / full at f16 |")
    print("|---|---:|---:|---:|")
    for p in pols:
        avg = sum(sum(score[(length, t, i, p)] for i in done[t]) / len(done[t]) for t in tasks if done[t])
        avg /= sum(1 for t in tasks if done[t])
        frac = sum(kv[(length, p)]) / len(kv[(length, p)])
        frac16 = sum(kv16[(length, p)]) / len(kv16[(length, p)])
        print(f"| {p} | {100 * avg:.1f} | {100 * frac:.1f}% | {100 * frac16:.1f}% |")
    print(f"| difference | mean ± 95% |")
    print("|---|---:|")
    for q in others:
        means, var = [], 0.0
        for t in tasks:
            d = [score[(length, t, i, base)] - score[(length, t, i, q)] for i in done[t]]
            if not d:
                continue
            m = sum(d) / len(d)
            means.append(m)
            if len(d) > 1:
                var += sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d)
        k = len(means)
        print(f"| {base} − {q} | {100 * sum(means) / k:+.1f} ± {100 * 1.96 * math.sqrt(var) / k:.1f} |")
    print()
