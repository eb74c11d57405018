#!/usr/bin/env python3
"""Needle coverage of lsa's first selection, RULER 4K, seeds 1-2 (docs/accuracy.md, session 11).

trace-seeds-1-2.txt.gz holds, per sample, lines printed by a temporary debug build (not committed):
  DBG prompt PROMPT_ID tokens N
  DBG needle ANSWER tokens T0 T1          (every occurrence of an answer string in the prompt)
  DBG cycle 0 n N kept F middle MB ME pages P ens S_0 ... S_{P-1}
the last being the ensemble chunk scores of the first Level-1 pass (16-token chunks = pages) and n
the middle pages the 14.5% budget lets it keep. For that format this script re-ranks the pages as
src/memory/lsa.cpp does (count above θ after spread 1, then the spread of the contrast-16 rise).
It also reads what `flashmem eval --lsa-trace FILE` writes (JSON lines, eval/selection_trace.h),
which records the chosen pages themselves. Either way it reports which needle sentences stay
whole on the device at the first pass. Both assume 16-token pages and chunks.

  analyse.py TRACE [RESULTS.jsonl]   (RESULTS: a run with full and lsa, to split by outcome)
"""
import collections
import gzip
import json
import statistics
import sys


def parse(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        first = f.readline()
    if first.startswith("{"):  # flashmem eval --lsa-trace
        out = []
        for line in open(path):
            j = json.loads(line)
            s0 = j["selections"][0]
            assert j["page_tokens"] == 16 and j["chunk_tokens"] == 16, "16-token pages and chunks only"
            out.append({"pid": j["prompt_id"], "n": s0["slots"], "lo": s0["middle"][0], "hi": s0["middle"][1],
                        "ens": s0["chunk_scores"], "pages": s0["pages"],
                        "needles": [(a["text"], a["token_begin"], a["token_end"] - 1) for a in j["answers"]]})
        return out
    out, cur = [], None
    for line in opener(path, "rt"):
        p = line.split()
        if line.startswith("DBG prompt"):
            cur = {"pid": p[2], "needles": []}
            out.append(cur)
        elif line.startswith("DBG needle"):
            cur["needles"].append((p[2], int(p[4]), int(p[5])))
        elif line.startswith("DBG cycle 0"):
            i = p.index("ens")
            cur.update(n=int(p[4]), lo=int(p[8]), hi=int(p[9]), ens=[float(x) for x in p[i + 1:]])
    return out


def spread(v, lo, hi):
    o = list(v)
    for ch in range(lo, hi):
        if ch - 1 >= lo: o[ch] = max(o[ch], 0.9 * v[ch - 1])
        if ch + 1 < hi: o[ch] = max(o[ch], 0.9 * v[ch + 1])
    return o


def rise(v, lo, hi, w=16):
    r = [0.0] * len(v)
    for ch in range(lo, hi):
        win = sorted(v[max(lo, ch - w):min(hi, ch + w + 1)])
        r[ch] = max(0.0, v[ch] - win[len(win) // 4])
    return r


def kept(d, theta=0.5):
    lo, hi, e = d["lo"], d["hi"], d["ens"]
    if "pages" in d:  # as chosen
        return set(d["pages"]), sum(spread(e, lo, hi)[pg] > theta for pg in range(lo, hi))
    rank, key = spread(e, lo, hi), spread(rise(e, lo, hi), lo, hi)
    score = {pg: (rank[pg] > theta) + key[pg] for pg in range(lo, hi)}
    order = sorted(score, key=lambda pg: (-score[pg], -pg))
    return set(order[:d["n"]]), sum(rank[pg] > theta for pg in range(lo, hi))


samples = parse(sys.argv[1])
outcome = {}
if len(sys.argv) > 2:
    by = collections.defaultdict(dict)
    for line in open(sys.argv[2]):
        r = json.loads(line)
        by[r["prompt_id"]][r["policy"]] = r["score"]
    outcome = {k: v["lsa"] < v["full"] for k, v in by.items() if "lsa" in v and "full" in v}
whole, whole_lost, above, recent = collections.Counter(), collections.Counter(), [], []
for d in samples:
    on, n_above = kept(d)
    above.append(n_above)
    recent.append(sum(pg >= d["hi"] - 48 for pg in on) / len(on))
    task = d["pid"].split("/")[1]
    if not task.startswith("niah"):
        continue
    for _, t0, t1 in d["needles"]:
        pages = range((t0 - 20) // 16, (t1 + 2) // 16 + 1)  # the sentence: key, "is:", number
        if not all(d["lo"] <= pg < d["hi"] for pg in pages):
            continue  # in the sink or tail: always resident
        ok = all(pg in on for pg in pages)
        whole[task, ok] += 1
        if outcome.get(d["pid"]):
            whole_lost[task, ok] += 1
print(f"{len(samples)} samples; middle pages above θ: median {statistics.median(above)}, "
      f"{sum(a > d['n'] for a, d in zip(above, samples))} samples with more than the budget's "
      f"{statistics.median(d['n'] for d in samples)} middle slots; kept middle pages among the last 48 "
      f"before the tail: {100 * statistics.mean(recent):.0f}%")
print("| task | needle sentences kept whole | in samples where lsa scored below full |")
print("|---|---:|---:|")
for task in sorted({t for t, _ in whole}):
    lost = whole_lost[task, True] + whole_lost[task, False]
    print(f"| {task} | {whole[task, True]}/{whole[task, True] + whole[task, False]} | "
          f"{whole_lost[task, True]}/{lost} |")
