#!/usr/bin/env python3
"""Copies of a GGUF with other tensor data, for the GPU machine (which cannot download models).

  gguf-weights.py zero MODEL OUT.gguf.xz TABLE.json   # here (needs gguf-py): tensor data zeroed,
                                                       # xz-compressed, and the tensor table
  gguf-weights.py random ZEROED.gguf TABLE.json OUT   # there (numpy): random, well-scaled values

The zeroed copy keeps the metadata, tokenizer, shapes, types and sizes: a benchmark's speed does
not depend on the weights' values, and a 100 MB model compresses to well under 1 MB, so it travels
in one call. The random copy is for correctness checks that compare two backends on the same
file (logits, greedy agreement, batch invariance), not for output quality.
"""
import json
import lzma
import sys


def zero(model, out, table):
    from gguf import GGUFReader  # pip install gguf
    r = GGUFReader(model)
    rows = [[int(t.data_offset), int(t.n_bytes), t.tensor_type.name] for t in r.tensors]
    with open(model, 'rb') as f:
        head = f.read(r.data_offset)
        f.seek(0, 2)
        size = f.tell()
    with lzma.open(out, 'wb', preset=6) as o:
        o.write(head)
        left = size - len(head)
        block = bytes(1 << 20)
        while left > 0:
            n = min(left, len(block))
            o.write(block[:n])
            left -= n
    json.dump(rows, open(table, 'w'))


def randomize(zeroed, table, out):
    import numpy as np
    buf = bytearray(open(zeroed, 'rb').read())
    rng = np.random.default_rng(7)
    for off, n, typ in json.load(open(table)):
        if typ == 'F32':  # norm weights
            buf[off:off + n] = (1.0 + 0.1 * rng.standard_normal(n // 4)).astype('<f4').tobytes()
        elif typ == 'F16':
            buf[off:off + n] = (0.02 * rng.standard_normal(n // 2)).astype('<f2').tobytes()
        elif typ in ('Q4_0', 'Q4_1', 'Q5_0', 'Q8_0'):
            size = {'Q4_0': 18, 'Q4_1': 20, 'Q5_0': 22, 'Q8_0': 34}[typ]
            nb = n // size
            b = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
            d = rng.uniform(0.002, 0.01, nb).astype('<f2')
            if typ == 'Q8_0':
                d = (d.astype(np.float32) / 16).astype('<f2')
            b[:, 0:2] = d.view(np.uint8).reshape(nb, 2)
            if typ == 'Q4_1':  # min: centre the values
                b[:, 2:4] = (-8 * d.astype(np.float32)).astype('<f2').view(np.uint8).reshape(nb, 2)
            buf[off:off + n] = b.tobytes()
        else:
            raise SystemExit(f'gguf-weights: no random fill for {typ} tensors')
    open(out, 'wb').write(buf)


if __name__ == '__main__':
    if len(sys.argv) == 5 and sys.argv[1] == 'zero':
        zero(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == 'random':
        randomize(*sys.argv[2:])
    else:
        raise SystemExit(__doc__)
