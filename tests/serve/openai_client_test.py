"""flashmem serve driven by the official `openai` Python client (PyPI).

Starts `flashmem serve` on a free port with an API key, then checks, for chat and completions,
streamed and not: greedy text equal to `flashmem run` on the same prompt, stop strings, usage
counts, the finish reason, and the errors a client gets (401, 400). Exits non-zero on the first
failed check. Usage: openai_client_test.py FLASHMEM_BINARY (the model comes from $FLASHMEM_MODEL).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import openai

FLASHMEM = sys.argv[1]
MODEL = os.environ["FLASHMEM_MODEL"]
KEY = "test-key"
QUESTION = "What is the capital of France? Answer in one sentence."
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run_cli(args):
    """`flashmem run` with a JSON report: (text, report)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as rep:
        out = subprocess.run([FLASHMEM, "run", "-m", MODEL, "-c", "2048", "-t", "2", "--temp", "0",
                              "--report-json", rep.name] + args, capture_output=True, text=True, check=True)
        return out.stdout[:-1], json.load(open(rep.name))  # run ends the text with one newline


def main():
    server = subprocess.Popen([FLASHMEM, "serve", "-m", MODEL, "--port", "0", "-c", "2048", "-t", "2",
                               "--api-key", KEY, "--max-requests", "4"],
                              stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.time() + 120
        while port is None and time.time() < deadline:
            line = server.stderr.readline()
            if not line:
                break
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if m:
                port = int(m.group(1))
        check(port is not None, "the server says where it listens")
        if port is None:
            return
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0, timeout=300)

        # Chat, not streamed: the greedy answer of `flashmem run --chat`.
        want, rep = run_cli(["--chat", "-p", QUESTION, "-n", "32"])
        got = client.chat.completions.create(model="any", messages=[{"role": "user", "content": QUESTION}],
                                             max_tokens=32, temperature=0)
        check(got.choices[0].message.content == want, f"chat text equals flashmem run ({want!r})")
        check(got.choices[0].message.role == "assistant", "chat role")
        check(got.usage.prompt_tokens == rep["prompt_tokens"], "chat usage: prompt tokens")
        check(got.usage.completion_tokens == rep["generated_tokens"], "chat usage: completion tokens")
        check(got.choices[0].finish_reason == ("length" if rep["stop_reason"] == "length" else "stop"),
              "chat finish reason")

        # Chat, streamed: the deltas add up to the same text; usage comes in the last chunk.
        text, usage, finish = "", None, None
        for chunk in client.chat.completions.create(model="any", messages=[{"role": "user", "content": QUESTION}],
                                                    max_tokens=32, temperature=0, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if getattr(chunk, "usage", None):
                usage = chunk.usage
        check(text == want, "streamed chat text equals the non-streamed one")
        check(usage is not None and usage.completion_tokens == rep["generated_tokens"], "streamed usage")
        check(finish == got.choices[0].finish_reason, "streamed finish reason")

        # Completions with a stop string, streamed and not.
        prompt = "The days of the week are Monday, Tuesday,"
        full, rep2 = run_cli(["-p", prompt, "-n", "24", "--ignore-eos"])
        cut = full.split(",")[0]
        got = client.completions.create(model="any", prompt=prompt, max_tokens=24, temperature=0, stop=[","])
        check(got.choices[0].text == cut, f"completion cut at the stop string ({cut!r})")
        check(got.choices[0].finish_reason == "stop" or "," not in full, "completion finish reason")
        check(got.usage.prompt_tokens == rep2["prompt_tokens"], "completion usage: prompt tokens")
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="any", prompt=prompt, max_tokens=24, temperature=0, stop=[","], stream=True) if c.choices)
        check(streamed == cut, "streamed completion equals the non-streamed one")
        plain, _ = run_cli(["-p", prompt, "-n", "24"])
        whole = client.completions.create(model="any", prompt=prompt, max_tokens=24, temperature=0)
        check(whole.choices[0].text == plain, "completion without a stop string equals flashmem run")

        # What a client gets wrong.
        try:
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
            check(False, "a wrong key is refused")
        except openai.AuthenticationError:
            check(True, "a wrong key is refused (401)")
        try:
            client.chat.completions.create(model="any", messages=[{"role": "user", "content": "x"}], n=2)
            check(False, "n = 2 is refused")
        except openai.BadRequestError as e:
            check("'n'" in str(e), "n = 2 is refused (400, naming n)")
        try:
            client.completions.create(model="any", prompt="word " * 3000, max_tokens=4)
            check(False, "a prompt longer than the context is refused")
        except openai.BadRequestError as e:
            check("context" in str(e), "a prompt longer than the context is refused (400, with the arithmetic)")
        models = client.models.list()
        check(len(models.data) == 1, "one model listed")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    check(server.returncode == 0, "the server stops cleanly on SIGTERM")


main()
sys.exit(1 if failures else 0)
