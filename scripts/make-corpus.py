#!/usr/bin/env python3
"""Builds the text corpus of the needle suite (docs/indexer.md, "Corpus"): OUT/<family>/ files.

Run through scripts/make-corpus.sh, which installs the Debian packages it reads. Every family is
made from sorted inputs (installed Debian files) or generated with a fixed seed, and capped at
--max-bytes (default 4 MiB); the same packages give the same bytes, which OUT/MANIFEST.tsv
(family, file, bytes, sha256) lets a rebuild check.

Training families: man, pysrc, docs, kjv, fortunes, dict, code-c (from installed files) and
csv, json, logs, chat (generated). Debian's /usr/share/common-licenses is held out: it goes only
to OUT/heldout/licenses, and every other family drops license texts (files named COPYING,
LICENSE*, LICENCE*, COPYRIGHT*, copyright, anything under common-licenses, and files whose
first 2 KB read like a license) and the license comment that opens C headers.

Usage: scripts/make-corpus.py OUT_DIR [--max-bytes N] [--only FAMILY,...]
"""
import argparse
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

LICENSE_NAME = re.compile(r"^(copying|licen[sc]e|copyright|unlicense)", re.I)
LICENSE_TEXT = re.compile(
    r"GNU (LESSER |LIBRARY |AFFERO )?GENERAL PUBLIC LICENSE|Apache License|Mozilla Public License|"
    r"Permission is hereby granted, free of charge|Redistribution and use in source and binary forms|"
    r"Permission to use, copy, modify, and(/or)? distribute|Artistic License|Creative Commons|"
    r"This software and database is being provided to you, the LICENSEE",
    re.I)
SEED = 20240611


def license_like(path, text):
    parts = path.split(os.sep)
    if "common-licenses" in parts or LICENSE_NAME.match(os.path.basename(path)):
        return True
    return bool(LICENSE_TEXT.search(text[:2048]))


def utf8_text(data):
    """Decoded text, or None for binary / non-UTF-8 data."""
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class Family:
    """Writes one family's files until the byte cap is reached."""

    def __init__(self, out, name, max_bytes):
        self.dir = os.path.join(out, name)
        self.name, self.max_bytes, self.bytes, self.files = name, max_bytes, 0, 0
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(self.dir)

    def full(self):
        return self.bytes >= self.max_bytes

    def add(self, rel, text, source=""):
        """Adds a file (cut at a line end to fit the cap); False once the family is full."""
        if self.full():
            return False
        if license_like(source or rel, text) or not text.strip():
            return True
        data = text.encode("utf-8")
        room = self.max_bytes - self.bytes
        if len(data) > room:
            data = data[: data.rfind(b"\n", 0, room) + 1]
            if not data:
                return False
        path = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.bytes += len(data)
        self.files += 1
        return not self.full()


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw).stdout


def sorted_files(root, keep=lambda p: True):
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p) and keep(p):
                out.append(p)
    return sorted(out)


# ---- families from installed files -------------------------------------------------------------

def fam_man(fam):
    """Manual pages of the packages manpages and manpages-dev, rendered to plain text."""
    pages = []
    for pkg in ("manpages", "manpages-dev"):
        for p in run(["dpkg", "-L", pkg], text=True).split("\n"):
            if re.match(r"^/usr/share/man/man\d/[^/]+\.\d\w*\.gz$", p) and os.path.isfile(p) and not os.path.islink(p):
                pages.append(p)
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING="")
    for p in sorted(set(pages)):
        raw = run(["man", "--no-hyphenation", "--no-justification", "-l", "-P", "cat", p], env=env)
        text = run(["col", "-bx"], input=raw, env=env).decode("utf-8", "replace")
        sec, name = p.split("/")[-2], os.path.basename(p)[: -len(".gz")]
        if not fam.add(f"{sec}/{name}.txt", text, p):
            break


def fam_pysrc(fam):
    """The Python standard library's top-level modules."""
    root = "/usr/lib/python3.11"
    for p in sorted_files(root, lambda p: os.path.dirname(p) == root and p.endswith(".py")):
        text = utf8_text(open(p, "rb").read())
        if text is not None and not fam.add(os.path.basename(p), text, p):
            break


DOC_NAME = re.compile(r"^(readme|news|changes|changelog|history|todo|faq|notes|usage)", re.I)


def fam_docs(fam):
    """Package documentation under /usr/share/doc (README, NEWS, changelogs), at most 64 KB per file."""
    for p in sorted_files("/usr/share/doc", lambda p: DOC_NAME.match(os.path.basename(p))):
        data = open(p, "rb").read()
        if p.endswith(".gz"):
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                continue
        text = utf8_text(data)
        if text is None:
            continue
        text = text[:65536]
        text = text[: text.rfind("\n") + 1] if len(text) == 65536 else text
        rel = os.path.relpath(p, "/usr/share/doc")
        if not fam.add(rel[:-3] if rel.endswith(".gz") else rel, text, p):
            break


BOOK_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def fam_kjv(fam):
    """The King James Bible (Debian bible-kjv), one file per book, a paragraph per chapter."""
    out = run(["bible", "-f", "Gen1:1-Rev22:21"], text=True)
    books, order, last_ch = {}, [], None
    for line in out.split("\n"):
        m = BOOK_VERSE.match(line)
        if not m:
            continue
        book, ch, text = m.group(1), m.group(2), m.group(4)
        if book not in books:
            books[book] = []
            order.append(book)
            last_ch = None
        if last_ch is not None and ch != last_ch:
            books[book].append("")
        books[book].append(text)
        last_ch = ch
    for i, book in enumerate(order):
        if not fam.add(f"{i + 1:02d}-{book}.txt", "\n".join(books[book]) + "\n"):
            break


def fam_fortunes(fam):
    """Debian fortunes-min data files (entries separated by '%' lines)."""
    root = "/usr/share/games/fortunes"
    for p in sorted_files(root, lambda p: not p.endswith(".dat")):
        text = utf8_text(open(p, "rb").read())
        if text is not None and not fam.add(os.path.basename(p) + ".txt", text, p):
            break


def fam_dict(fam):
    """WordNet 3.0 (Debian wordnet-base) as a dictionary: 'word, word (noun): gloss' lines."""
    pos_name = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
    for part in ("adj", "adv", "verb", "noun"):
        lines = []
        for line in open(f"/usr/share/wordnet/data.{part}", encoding="utf-8", errors="replace"):
            if line.startswith("  ") or "|" not in line:  # the license header and malformed lines
                continue
            head, gloss = line.split("|", 1)
            f = head.split()
            n = int(f[3], 16)
            words = [f[4 + 2 * i].replace("_", " ") for i in range(n)]
            words = [re.sub(r"\(\w+\)$", "", w) for w in words]
            lines.append(f"{', '.join(words)} ({pos_name.get(f[2], f[2])}): {gloss.strip()}")
        if not fam.add(f"{part}.txt", "\n".join(lines) + "\n"):
            break


C_LICENSE_COMMENT = re.compile(r"^\s*/\*.*?\*/\s*", re.S)


def fam_code_c(fam):
    """C headers under /usr/include (top level and sys/), without their opening license comment."""
    root = "/usr/include"
    keep = lambda p: p.endswith(".h") and os.path.dirname(p) in (root, root + "/sys")
    for p in sorted_files(root, keep):
        text = utf8_text(open(p, "rb").read())
        if text is None:
            continue
        m = C_LICENSE_COMMENT.match(text)
        if m and re.search(r"copyright|licen[sc]e", m.group(0), re.I):
            text = text[m.end():]
        if LICENSE_TEXT.search(text):  # a license still in the text: leave the file out
            continue
        if not fam.add(os.path.relpath(p, root), text):
            break


def heldout_licenses(out):
    """Debian's common licenses, the held-out family: only here, never in a training family."""
    fam = Family(os.path.join(out, "heldout"), "licenses", 1 << 40)
    for p in sorted_files("/usr/share/common-licenses"):
        text = utf8_text(open(p, "rb").read())
        if text is None or not text.strip():
            continue
        with open(os.path.join(fam.dir, os.path.basename(p)), "w", encoding="utf-8") as f:
            f.write(text)
        fam.bytes += len(text.encode("utf-8"))
        fam.files += 1
    return fam


# ---- generated families (fixed seed) -----------------------------------------------------------

def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def words():
    """The Debian word list's short lowercase words, without the words RULER never draws
    (src/eval/blocked_words.inc holds their FNV-1a hashes)."""
    inc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "eval", "blocked_words.inc")
    blocked = {int(h, 16) for line in open(inc) if not line.startswith("//")
               for h in re.findall(r"0x([0-9a-f]{16})", line)}
    assert len(blocked) > 500, inc
    ws = [w.strip() for w in open("/usr/share/dict/american-english", encoding="utf-8")]
    return sorted({w for w in ws if re.fullmatch(r"[a-z]{3,10}", w) and fnv1a64(w) not in blocked})


def fam_csv(fam, W):
    r = random.Random(SEED + 1)
    schemas = [
        ("inventory", ["sku", "item", "warehouse", "quantity", "unit_price", "restocked"]),
        ("weather", ["station", "date", "temp_c", "humidity", "wind_kmh", "conditions"]),
        ("orders", ["order_id", "customer", "city", "amount", "currency", "status"]),
        ("sensors", ["timestamp", "device", "channel", "value", "unit", "ok"]),
    ]
    cities = [w.capitalize() for w in r.sample(W, 40)]
    t = 0
    while True:
        name, cols = schemas[t % len(schemas)]
        rows = [",".join(cols)]
        for i in range(r.randint(200, 600)):
            day = f"20{r.randint(10, 24):02d}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
            v = {
                "sku": lambda: f"SKU-{r.randint(10000, 99999)}", "item": lambda: r.choice(W),
                "warehouse": lambda: r.choice(cities), "quantity": lambda: str(r.randint(0, 500)),
                "unit_price": lambda: f"{r.uniform(0.5, 300):.2f}", "restocked": lambda: day,
                "station": lambda: f"{r.choice(cities).upper()[:4]}{r.randint(1, 9)}", "date": lambda: day,
                "temp_c": lambda: f"{r.gauss(12, 9):.1f}", "humidity": lambda: str(r.randint(20, 100)),
                "wind_kmh": lambda: f"{abs(r.gauss(15, 10)):.1f}",
                "conditions": lambda: r.choice(["clear", "rain", "fog", "snow", "cloudy"]),
                "order_id": lambda: str(r.randint(100000, 999999)), "customer": lambda: f"{r.choice(W)} {r.choice(W)}".title(),
                "city": lambda: r.choice(cities), "amount": lambda: f"{r.uniform(1, 2000):.2f}",
                "currency": lambda: r.choice(["USD", "EUR", "GBP"]),
                "status": lambda: r.choice(["shipped", "pending", "cancelled", "delivered"]),
                "timestamp": lambda: f"{day}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}Z",
                "device": lambda: f"dev-{r.randint(1, 64):03d}", "channel": lambda: str(r.randint(0, 7)),
                "value": lambda: f"{r.uniform(-50, 150):.3f}", "unit": lambda: r.choice(["C", "V", "A", "Pa"]),
                "ok": lambda: r.choice(["true", "false"]),
            }
            rows.append(",".join(v[c]() for c in cols))
        if not fam.add(f"{t:03d}-{name}.csv", "\n".join(rows) + "\n"):
            break
        t += 1


def fam_json(fam, W):
    r = random.Random(SEED + 2)
    t = 0
    while True:
        recs = []
        for i in range(r.randint(40, 120)):
            rec = {"id": r.randint(1, 10**6), "name": f"{r.choice(W)}-{r.choice(W)}", "active": r.random() < 0.7,
                   "tags": r.sample(W, r.randint(0, 4)), "score": round(r.uniform(0, 100), 2),
                   "owner": {"user": r.choice(W), "team": r.choice(W), "level": r.randint(1, 5)},
                   "created": f"20{r.randint(15, 24)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"}
            if r.random() < 0.3:
                rec["notes"] = " ".join(r.choice(W) for _ in range(r.randint(4, 14))).capitalize() + "."
            recs.append(rec)
        if t % 2 == 0:  # pretty-printed documents and JSON Lines, alternately
            text, ext = json.dumps({"records": recs, "page": t, "total": len(recs)}, indent=2) + "\n", "json"
        else:
            text, ext = "".join(json.dumps(x) + "\n" for x in recs), "jsonl"
        if not fam.add(f"{t:03d}-records.{ext}", text):
            break
        t += 1


def fam_logs(fam, W):
    r = random.Random(SEED + 3)
    services = ["api", "auth", "billing", "scheduler", "search", "storage"]
    paths = ["/" + "/".join(r.sample(W, r.randint(1, 3))) for _ in range(60)]
    t, f = 1_600_000_000, 0
    while True:
        lines, svc = [], services[f % len(services)]
        for i in range(r.randint(400, 900)):
            t += r.randint(0, 5)
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{r.randint(0, 999):03d}Z"
            kind = r.random()
            if kind < 0.55:
                code = r.choice([200, 200, 200, 201, 204, 301, 304, 400, 401, 403, 404, 500, 503])
                lines.append(f'{ts} INFO {svc}[{r.randint(100, 999)}]: {r.choice(["GET", "POST", "PUT", "DELETE"])} '
                             f'{r.choice(paths)} {code} {r.randint(1, 2000)}ms ip=10.{r.randint(0, 255)}.'
                             f'{r.randint(0, 255)}.{r.randint(1, 254)}')
            elif kind < 0.8:
                lines.append(f"{ts} DEBUG {svc}[{r.randint(100, 999)}]: cache {r.choice(['hit', 'miss'])} "
                             f"key={r.choice(W)}:{r.randint(1, 9999)} size={r.randint(64, 65536)}")
            elif kind < 0.95:
                lines.append(f"{ts} WARN {svc}[{r.randint(100, 999)}]: slow {r.choice(W)} query took "
                             f"{r.uniform(1, 30):.2f}s (threshold 1.00s)")
            else:
                lines.append(f"{ts} ERROR {svc}[{r.randint(100, 999)}]: {r.choice(W)} failed: connection reset by peer")
                lines.append("Traceback (most recent call last):")
                for _ in range(r.randint(1, 3)):
                    lines.append(f'  File "/srv/{svc}/{r.choice(W)}.py", line {r.randint(1, 900)}, in {r.choice(W)}')
                lines.append("ConnectionResetError: [Errno 104] Connection reset by peer")
        if not fam.add(f"{f:03d}-{svc}.log", "\n".join(lines) + "\n"):
            break
        f += 1


def fortune_entries():
    out = []
    for p in sorted_files("/usr/share/games/fortunes", lambda p: not p.endswith(".dat")):
        for e in open(p, encoding="utf-8", errors="replace").read().split("\n%\n"):
            e = " ".join(e.split())
            if 20 <= len(e) <= 300:
                out.append(e)
    return out


def fam_chat(fam, W):
    """Multi-speaker chat transcripts from fortunes and word-list sentences."""
    r = random.Random(SEED + 4)
    quotes = fortune_entries()
    names = sorted({w.capitalize() for w in r.sample(W, 300)})
    openers = ["hey, quick question:", "fwiw", "ok so", "agreed.", "not sure about that,", "lol", "+1,", "wait,",
               "thanks!", "I think", "can someone check", "update:", "reminder:", "heads up:"]
    t, f = 0, 0
    while True:
        people = r.sample(names, r.randint(2, 5))
        chan = r.choice(W)
        lines = [f"# {chan} channel, day {f + 1}"]
        for i in range(r.randint(150, 400)):
            t += r.randint(5, 600)
            h, m = (t // 3600) % 24, (t // 60) % 60
            who = r.choice(people)
            if r.random() < 0.3 and quotes:
                msg = r.choice(quotes)
            else:
                msg = f"{r.choice(openers)} " + " ".join(r.choice(W) for _ in range(r.randint(3, 16)))
                msg += r.choice([".", "?", "!", "", " :)"])
            lines.append(f"[{h:02d}:{m:02d}] <{who}> {msg}")
        if not fam.add(f"{f:03d}-{chan}.txt", "\n".join(lines) + "\n"):
            break
        f += 1


FROM_FILES = {"man": fam_man, "pysrc": fam_pysrc, "docs": fam_docs, "kjv": fam_kjv, "fortunes": fam_fortunes,
              "dict": fam_dict, "code-c": fam_code_c}
GENERATED = {"csv": fam_csv, "json": fam_json, "logs": fam_logs, "chat": fam_chat}


def manifest(out):
    rows = []
    for d, dirs, files in os.walk(out):
        dirs.sort()
        for f in files:
            p = os.path.join(d, f)
            rel = os.path.relpath(p, out)
            if rel == "MANIFEST.tsv":
                continue
            parts = rel.split(os.sep)
            fam, inner = ("/".join(parts[:2]), "/".join(parts[2:])) if parts[0] == "heldout" else (parts[0], "/".join(parts[1:]))
            data = open(p, "rb").read()
            rows.append((fam, inner, len(data), hashlib.sha256(data).hexdigest()))
    rows.sort()
    with open(os.path.join(out, "MANIFEST.tsv"), "w") as f:
        f.write("family\tfile\tbytes\tsha256\n")
        for row in rows:
            f.write("\t".join(map(str, row)) + "\n")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--max-bytes", type=int, default=4 << 20, help="cap per training family (default 4 MiB)")
    ap.add_argument("--only", default="", help="comma-separated families to (re)build (default: all)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    only = set(filter(None, a.only.split(",")))
    W = words()
    fams = []
    for name, fn in list(FROM_FILES.items()) + list(GENERATED.items()):
        if only and name not in only:
            continue
        t0 = time.time()
        fam = Family(a.out, name, a.max_bytes)
        fn(fam) if name in FROM_FILES else fn(fam, W)
        fams.append(fam)
        print(f"{name:10s} {fam.files:5d} files {fam.bytes:9d} bytes  ({time.time() - t0:.1f}s)", flush=True)
    if not only or "licenses" in only or "heldout" in only:
        fam = heldout_licenses(a.out)
        print(f"{'heldout/licenses':10s} {fam.files:5d} files {fam.bytes:9d} bytes  (held out)", flush=True)
    rows = manifest(a.out)
    print(f"MANIFEST.tsv: {len(rows)} files, {sum(r[2] for r in rows)} bytes", flush=True)


if __name__ == "__main__":
    sys.exit(main())
