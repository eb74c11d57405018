"""A bounded load test of flashmem serve on loopback.

Starts `flashmem serve` admitting R requests at once with a queue of Q, measures each prompt's
greedy answer alone, then keeps 4 × (R + Q) clients sending long prompts for a fixed time. Every
accepted request must come back with the answer it gets alone; the others must get 429; after
the load, /metrics must show nothing running and no device or host KV bytes held. Prints the
latency percentiles and throughput as one Markdown table row (docs/benchmarks.md).

Usage: load_test.py FLASHMEM_BINARY [--seconds 30] [--running 2] [--queue 2] [--threads 2]
       (the model comes from $FLASHMEM_MODEL)
"""
import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ap = argparse.ArgumentParser()
ap.add_argument("flashmem")
ap.add_argument("--seconds", type=float, default=30)
ap.add_argument("--running", type=int, default=2)
ap.add_argument("--queue", type=int, default=2)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--max-tokens", type=int, default=16)
ap.add_argument("--extra", default="", help="more flags for flashmem serve (e.g. --backend cuda)")
args = ap.parse_args()

TOPICS = ["the harbour", "the mill", "the library", "the observatory", "the vineyard", "the bridge"]


def prompt(i):
    # ~1000 tokens of text with a question about it at the end.
    t = TOPICS[i % len(TOPICS)]
    body = " ".join(f"Record {k}: the keeper of {t} wrote that on day {k * 7 + i} the {t} opened at {6 + k % 5} "
                    f"o'clock and closed at {17 + k % 4}." for k in range(40))
    return body + f"\nQuestion: on which day did {t} open at 8 o'clock first? Answer:"


def post(port, obj):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(obj).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        out = {}
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out


def main():
    server = subprocess.Popen([args.flashmem, "serve", "-m", os.environ["FLASHMEM_MODEL"], "--port", "0",
                               "-c", "2048", "-t", str(args.threads), "--max-requests", str(args.running),
                               "--max-queue", str(args.queue)] + args.extra.split(),
                              stderr=subprocess.PIPE, text=True)
    failures = []
    try:
        port = None
        for _ in range(200):
            m = re.search(r"http://127\.0\.0\.1:(\d+)", server.stderr.readline())
            if m:
                port = int(m.group(1))
                break
        assert port, "the server did not say where it listens"
        body = lambda i: {"prompt": prompt(i), "max_tokens": args.max_tokens, "temperature": 0}
        alone = {}
        for i in range(len(TOPICS)):
            code, r = post(port, body(i))
            assert code == 200, r
            alone[i] = r["choices"][0]["text"]
        clients = 4 * (args.running + args.queue)
        lat, busy, bad, tokens = [], [0], [], [0]
        lock = threading.Lock()
        stop_at = time.time() + args.seconds

        def client(c):
            n = 0
            while time.time() < stop_at:
                i = (c + n) % len(TOPICS)
                n += 1
                t0 = time.time()
                code, r = post(port, body(i))
                dt = time.time() - t0
                with lock:
                    if code == 200:
                        lat.append(dt)
                        tokens[0] += r["usage"]["completion_tokens"]
                        if r["choices"][0]["text"] != alone[i]:
                            bad.append(f"prompt {i}: {r['choices'][0]['text']!r} != {alone[i]!r}")
                    elif code == 429:
                        busy[0] += 1
                    else:
                        bad.append(f"HTTP {code}: {r}")
                if code == 429:
                    time.sleep(0.2)  # a polite client backs off (the server says Retry-After: 1)

        t0 = time.time()
        ts = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        wall = time.time() - t0
        m = metrics(port)
        for k in ("flashmem_requests_running", "flashmem_requests_queued", "flashmem_device_kv_bytes",
                  "flashmem_host_mirror_bytes"):
            if m.get(k, -1) != 0:
                failures.append(f"{k} = {m.get(k)} after the load")
        failures += bad
        if not lat:
            failures.append("no request was accepted")
        if busy[0] == 0:
            failures.append("nothing was refused with 429 at 4x the admissible concurrency")
        lat.sort()
        pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
        print(f"| {clients} clients, {args.running} running + {args.queue} queued, {args.seconds:.0f} s | "
              f"{len(lat)} | {busy[0]} | {pct(0.5):.2f} | {pct(0.99):.2f} | {tokens[0] / wall:.1f} | "
              f"{m.get('flashmem_decode_tokens_per_second', 0):.1f} | {m.get('flashmem_decode_batch_mean', 0):.2f} |")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    for f in failures:
        print("FAIL", f)
    sys.exit(1 if failures else 0)


main()
