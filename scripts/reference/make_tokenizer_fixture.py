#!/usr/bin/env python3
"""Builds tests/fixtures/tokenizer_cases.json: tricky strings with token ids from two
independent tokenizers, for tests/test_tokenizer.cpp.

References (flashmem's tokenizer is checked against these, not against itself):
  * llama.cpp's `llama-tokenize` binary, run on the GGUF model (path via --llama-tokenize or
    $LLAMA_TOKENIZE; this script never builds llama.cpp). Its ids are the expected ones.
  * HF `tokenizers` (pip install tokenizers): a BPE tokenizer assembled from the GGUF's own
    vocabulary and merges, with the pre-tokenizer of SmolLM2's published tokenizer.json
    (Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)]) and the
    control tokens added as special tokens. (transformers' GGUF loader is not used: it needs
    torch and has no "smollm" pre-tokenizer entry, so it would not split digits.)

Every case records both results and whether they agree; the script exits non-zero if any
case disagrees unless --allow-disagreement is given.

Usage:
  python3 scripts/reference/make_tokenizer_fixture.py \\
      --model ~/.cache/flashmem/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --llama-tokenize /path/to/llama.cpp/build/bin/llama-tokenize \\
      --out tests/fixtures/tokenizer_cases.json
"""

import argparse
import ast
import importlib.metadata
import json
import os
import subprocess
import sys

import gguf
import tokenizers
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

# (name, text, parse_special). Kept to characters assigned by Unicode 14 (the version of
# flashmem's generated tables) so category differences between Unicode versions cannot matter.
CASES = [
    ("empty", "", True),
    ("hello", "Hello world", True),
    ("leading_space", " Hello world", True),
    ("leading_spaces", "   leading spaces", True),
    ("trailing_spaces", "trailing spaces   ", True),
    ("single_space", " ", True),
    ("whitespace_runs", "Hello,   world!  How are   you?", True),
    ("tabs_newlines", "tabs\tand\nnewlines\r\nmixed\t\t\n \n", True),
    ("only_newlines", "\n\n\n", True),
    ("crlf", "hello\r\nworld\r\n", True),
    ("long_whitespace", "x" + " " * 40 + "y" + "\n" * 10 + "\t" * 5 + "z   ", True),
    ("contractions", "I'm sure they'll say it's fine, don't you think? We've seen it; "
                     "I'd say you're right.", True),
    ("contractions_upper", "CAN'T WON'T I'M YOU'RE", True),
    ("apostrophe_edges", "rock 'n' roll ''quoted'' 's 'S 're 'RE '", True),
    ("curly_apostrophe", "it\u2019s \u2018quoted\u2019 \u201cdouble\u201d", True),
    ("digits", "1234567890", True),
    ("numbers_mixed", "3.14159 and 1,000,000 and -42 and 1e-10", True),
    ("long_number", "123456789012345678901234567890", True),
    ("timestamp", " 2024-06-01T12:34:56Z", True),
    ("latin_precomposed", "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade \u00c5ngstr\u00f6m", True),
    ("combining_marks", "e\u0301 a\u0308 n\u0303 Cafe\u0301", True),
    ("zalgo", "Z\u0334\u0321\u0322a\u0337l\u0338g\u0336o\u0335", True),
    ("chinese", "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002", True),
    ("japanese", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca"
                 "\u3001\u3072\u3089\u304c\u306a\u3002", True),
    ("korean", "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8\uc785\ub2c8\ub2e4", True),
    ("cyrillic", "\u0420\u043e\u0441\u0441\u0438\u044f \u0438 \u0423\u043a\u0440\u0430\u0457\u043d\u0430"
                 " \u2014 \u043f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!", True),
    ("greek", "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5", True),
    ("arabic_rtl", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 "
                   "\u0661\u0662\u0663", True),
    ("hebrew_rlm", "\u05e9\u05dc\u05d5\u05dd \u200f\u05e2\u05d5\u05dc\u05dd!", True),
    ("devanagari", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e", True),
    ("thai", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01", True),
    ("vietnamese", "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u", True),
    ("emoji", "\U0001F600\U0001F44D\U0001F3FD\U0001F1FA\U0001F1F8 and \u2764\ufe0f", True),
    ("emoji_zwj", "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 "
                  "\U0001F469\U0001F3FD\u200d\U0001F4BB", True),
    ("emoji_in_text", "I love \U0001F355 pizza!!! \U0001F602\U0001F602", True),
    ("flags", "\U0001F1EF\U0001F1F5\U0001F1EB\U0001F1F7\U0001F1E9\U0001F1EA \U0001F3FD", True),
    ("python_code", "def foo(x):\n    return x ** 2  # comment\n\n\nprint(foo(3))\n", True),
    ("cpp_code", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n", True),
    ("json", "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}", True),
    ("url_email", "https://example.com/path?q=1&r=two#frag user@example.org", True),
    ("markdown", "# Title\n\n- item 1\n- item 2\n\n**bold** _it_ `code`", True),
    ("punctuation_runs", "!!!??? ... --- (parens) [brackets] {braces} <<>> ;;", True),
    ("math", "\u2211_{i=1}^{n} x_i\u00b2 \u2264 \u221e \u00b1 \u221a2 \u2260 \u03c0", True),
    ("currency", "$100, \u20ac50, \u00a51000, \u00a320.99", True),
    ("unicode_spaces", "a\u00a0b\u3000c\u2009d\u202fe \u00a0 f", True),
    ("zero_width", "zero\u200bwidth\u200cnon\u200djoin\ufeffbom", True),
    ("fullwidth", "\uff21\uff22\uff23\uff11\uff12\uff13", True),
    ("other_numbers", "\u216b \u00bd \u00b2 \u00b3 \u2460", True),
    ("mixed_scripts", "abc\u0430\u0431\u0432\u6f22\u5b57123def", True),
    ("repeated_letters", "a" * 41, True),
    ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism", True),
    ("control_chars", "a\u0004b\u0007c\u001bd", True),
    ("chatml_inline", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", True),
    ("specials_adjacent", "a<|im_end|>b<|endoftext|><|im_start|><|im_start|>", True),
    ("specials_spaced", " <|im_end|> x <|endoftext|>", True),
    ("special_partial", "<|im_start| <|im_end <| im_start|> |>", True),
    ("other_specials", "<repo_name>flashmem<file_sep>main.cpp<gh_stars>100", True),
    ("special_not_parsed", "<|im_start|>user\nHello<|im_end|>", False),
    # Where the Qwen2 pattern differs from GPT-2's: a one-character prefix before letters,
    # line breaks kept after punctuation, whitespace runs cut after their last line break,
    # case-insensitive contractions, single digits.
    ("prefix_before_letters", "(hello) [world] \tindent -dash _under .dot @at #hash", True),
    ("punct_then_newlines", "end.\n\nNext;\r\n\r\nthen:\n  - item\n", True),
    ("space_runs_and_breaks", "a  \n  b \n\n  c\t\n\td   \n", True),
    ("contractions_mixed_case", "It'S THEY'Re we'VE I'M you'Ll she'D don'T", True),
    ("code_indent", "class A:\n    def f(self):\n        return {'k': [1, 2]}\n", True),
    ("qwen_specials", "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>pass<|endoftext|>", True),
]


def read_vocab(model_path):
    r = gguf.GGUFReader(model_path)
    f = r.fields

    def string(key):
        fl = f[key]
        return bytes(fl.parts[fl.data[0]]).decode("utf-8")

    def strings(key):
        fl = f[key]
        return [bytes(fl.parts[i]).decode("utf-8") for i in fl.data]

    def ints(key):
        fl = f[key]
        return [int(fl.parts[i][0]) for i in fl.data]

    return {
        "model": string("tokenizer.ggml.model"),
        "pre": string("tokenizer.ggml.pre"),
        "tokens": strings("tokenizer.ggml.tokens"),
        "types": ints("tokenizer.ggml.token_type"),
        "merges": strings("tokenizer.ggml.merges"),
    }


def hf_tokenizers(v):
    """(with specials, without specials) HF tokenizers built from the GGUF vocabulary."""
    assert v["model"] == "gpt2", v["model"]
    vocab = {}
    for i, t in enumerate(v["tokens"]):
        vocab.setdefault(t, i)
    merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
    if v["pre"] in ("smollm", "starcoder"):
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    elif v["pre"] == "gpt-2":
        pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif v["pre"] == "qwen2":
        # Qwen2.5's published tokenizer.json: Split on this regex (isolated), then ByteLevel
        # without its own regex. Its NFC normalizer is left out, as llama.cpp has none.
        pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                   r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        raise SystemExit(f"no HF pre-tokenizer mapping for {v['pre']!r}")

    def build(with_specials):
        tk = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tk.pre_tokenizer = pre
        if with_specials:
            control = [AddedToken(t, special=True, normalized=False)
                       for t, ty in zip(v["tokens"], v["types"]) if ty == 3]
            tk.add_special_tokens(control)
        user = [AddedToken(t, special=False, normalized=False)
                for t, ty in zip(v["tokens"], v["types"]) if ty == 4]
        if user:
            tk.add_tokens(user)
        return tk

    return build(True), build(False)


def llama_ids(binary, model, text, parse_special):
    cmd = [binary, "-m", model, "--stdin", "--ids", "--log-disable", "--no-escape"]
    if not parse_special:
        cmd.append("--no-parse-special")
    res = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=True)
    lines = [ln for ln in res.stdout.decode().splitlines() if ln.startswith("[")]
    return list(ast.literal_eval(lines[-1]))


def llama_version(binary):
    res = subprocess.run([binary, "--version"], capture_output=True)
    out = (res.stdout + res.stderr).decode(errors="replace")
    return " ".join(ln.strip() for ln in out.splitlines() if ln.startswith("version"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.environ.get("FLASHMEM_MODEL", os.path.expanduser(
        "~/.cache/flashmem/models/SmolLM2-135M-Instruct.Q4_1.gguf")))
    ap.add_argument("--llama-tokenize", default=os.environ.get("LLAMA_TOKENIZE"))
    ap.add_argument("--out", default="tests/fixtures/tokenizer_cases.json")
    ap.add_argument("--allow-disagreement", action="store_true")
    args = ap.parse_args()
    if not args.llama_tokenize:
        raise SystemExit("pass --llama-tokenize PATH or set LLAMA_TOKENIZE")

    v = read_vocab(args.model)
    hf_special, hf_plain = hf_tokenizers(v)
    cases = []
    disagree = 0
    for name, text, parse_special in CASES:
        ref = llama_ids(args.llama_tokenize, args.model, text, parse_special)
        hf = (hf_special if parse_special else hf_plain).encode(
            text, add_special_tokens=False).ids
        agree = ref == hf
        disagree += not agree
        case = {"name": name, "text": text, "parse_special": parse_special, "ids": ref,
                "references_agree": agree}
        if not agree:
            case["hf_tokenizers_ids"] = hf
            print(f"DISAGREE {name}: llama.cpp {ref} vs HF {hf}", file=sys.stderr)
        cases.append(case)

    doc = {
        "description": "Token ids (no BOS/EOS added) for tricky strings; 'ids' come from "
                       "llama.cpp's llama-tokenize, cross-checked with HF tokenizers. "
                       "Generated by scripts/reference/make_tokenizer_fixture.py.",
        "model": os.path.basename(args.model),
        "tokenizer": {"model": v["model"], "pre": v["pre"], "n_tokens": len(v["tokens"]),
                      "n_merges": len(v["merges"])},
        "generators": {
            "llama.cpp": llama_version(args.llama_tokenize),
            "hf_tokenizers": tokenizers.__version__,
            "gguf_py": importlib.metadata.version("gguf"),
            "python": sys.version.split()[0],
        },
        "n_disagreements": disagree,
        "cases": cases,
    }
    # One case per line keeps the file small and its diffs readable.
    head = json.dumps({k: val for k, val in doc.items() if k != "cases"}, ensure_ascii=False,
                      indent=1)
    body = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases)
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.write(head[:-2] + ',\n "cases": [\n' + body + "\n ]\n}\n")
    print(f"wrote {len(cases)} cases to {args.out}; {disagree} disagreements", file=sys.stderr)
    return 1 if disagree and not args.allow_disagreement else 0


if __name__ == "__main__":
    sys.exit(main())
