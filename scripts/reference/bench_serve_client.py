"""Load generator for scripts/bench_serve: concurrent clients of an OpenAI-compatible server.

  bench_serve_client.py URL PROMPTS_JSON OUT_JSON [--clients 16] [--requests 8] [--max-tokens 64]
                        [--tokenizer DIR] [--label NAME]

CLIENTS threads each send REQUESTS non-streaming greedy POST /v1/completions one after the
other, with prompt number client × REQUESTS + request of PROMPTS_JSON (a list of strings), so
both servers get the same requests. One unmeasured warm-up round (one request per client, at
once) comes first: transformers' continuous batching sets itself up on its first request.
Generated tokens are the responses' usage.completion_tokens; a response without usage is
counted by tokenizing its text with --tokenizer (an estimate, flagged in the output).
Prints one JSON line of figures and writes every completion to OUT_JSON.
"""
import argparse
import json
import math
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request


def call(url, body=None, timeout=600):
    """(seconds, decoded JSON) of a GET, or a POST of `body`; raises on any status but 200."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        # A fresh connection per request: keep-alive behaviour differs between servers, and a
        # local connect costs microseconds against requests of tenths of seconds.
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{url}: HTTP {error.code}: {error.read().decode(errors='replace')}") from None
    return time.perf_counter() - start, payload


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("prompts")
    parser.add_argument("out")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--tokenizer")
    parser.add_argument("--label", default="server")
    args = parser.parse_args()

    with open(args.prompts) as f:
        prompts = json.load(f)
    if len(prompts) < args.clients * args.requests:
        sys.exit(f"{args.prompts} holds {len(prompts)} prompts, {args.clients * args.requests} needed")
    base = args.url.rstrip("/")
    # The id the server lists: transformers serve names its model by the path it was given,
    # rlhf serve by the directory's last component.
    model = call(f"{base}/v1/models")[1]["data"][0]["id"]
    tokenizer = None
    if args.tokenizer:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(f"{args.tokenizer}/tokenizer.json")

    def body(prompt):
        return {"model": model, "prompt": prompt, "max_tokens": args.max_tokens, "temperature": 0, "stream": False}

    results = [None] * (args.clients * args.requests)
    errors = []

    def client(index, warm_up):
        try:
            for r in range(1 if warm_up else args.requests):
                number = index * args.requests + r
                seconds, reply = call(f"{base}/v1/completions", body(prompts[number]))
                if not warm_up:
                    results[number] = (seconds, reply)
        except Exception as error:  # reported after every thread ends, then the run fails
            errors.append(f"client {index}: {error}")

    for warm_up in (True, False):
        threads = [threading.Thread(target=client, args=(i, warm_up)) for i in range(args.clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
        if errors:
            sys.exit(f"{args.label}: {len(errors)} client(s) failed; first: {errors[0]}")

    latencies, completions, estimated = [], [], 0
    finish_reasons = {}
    for seconds, reply in results:
        choice = reply["choices"][0]
        tokens = (reply.get("usage") or {}).get("completion_tokens")
        if tokens is None:
            if tokenizer is None:
                sys.exit(f"{args.label}: a response has no usage.completion_tokens and no --tokenizer was given")
            tokens = len(tokenizer.encode(choice["text"], add_special_tokens=False).ids)
            estimated += 1
        latencies.append(seconds)
        finish_reasons[choice.get("finish_reason")] = finish_reasons.get(choice.get("finish_reason"), 0) + 1
        completions.append({"text": choice["text"], "tokens": tokens})
    generated = sum(c["tokens"] for c in completions)
    with open(args.out, "w") as f:
        json.dump(completions, f)
    print(json.dumps({
        "label": args.label,
        "model": model,
        "clients": args.clients,
        "requests": len(results),
        "max_tokens": args.max_tokens,
        "seconds": wall,
        "generated_tokens": generated,
        "tokens_counted_by_tokenizing": estimated,
        "finish_reasons": finish_reasons,
        "tokens_per_s": generated / wall,
        "requests_per_s": len(results) / wall,
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 99),
    }), flush=True)


if __name__ == "__main__":
    main()
