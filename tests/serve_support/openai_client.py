"""The `openai` client against `rlhf serve`, for tests/serve.rs.

  openai_client.py BASE_URL SCENARIO EXPECTED_JSON

BASE_URL is the server's `http://HOST:PORT`; EXPECTED_JSON a file of what the test knows the
answers must be (the model id, `rlhf generate`'s greedy outputs and token counts, ...). Each
scenario checks the server's answers against it and against OpenAI's API as the client reads it:
`generation` (completions and chat completions, streamed and not, sampling with seeds, log-probs,
stop strings, usage) and `errors` (bad requests: the client's exception classes and status codes,
and the error bodies over raw HTTP). A failed check raises AssertionError (exit status 1, the
message on stderr); on success one JSON line `{"checks": N}` goes to stdout, N the checks made.
"""
import json
import math
import sys
import urllib.error
import urllib.request

import openai


class Checks:
    """Assertions that count themselves, each failure naming what was checked."""

    def __init__(self):
        self.count = 0

    def true(self, condition, what):
        self.count += 1
        if not condition:
            raise AssertionError(what)

    def eq(self, got, want, what):
        self.count += 1
        if got != want:
            raise AssertionError(f"{what}: got {got!r}, expected {want!r}")

    def close(self, got, want, what, tolerance=1e-6):
        self.count += 1
        if not math.isclose(got, want, rel_tol=0, abs_tol=tolerance):
            raise AssertionError(f"{what}: got {got!r}, expected {want!r} (±{tolerance})")


def raw(base_url, method, path, body=None, data=None):
    """(status, body bytes) of a request with a JSON body (`body`) or these bytes (`data`)."""
    if body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(base_url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def server_sent_events(base_url, path, body):
    """The `data:` payloads of a streamed answer, in order, `[DONE]` included."""
    status, payload = raw(base_url, "POST", path, body)
    if status != 200:
        raise AssertionError(f"POST {path} {body}: status {status}: {payload!r}")
    return [line[len("data: "):] for line in payload.decode().splitlines() if line.startswith("data: ")]


def stop_string(text):
    """Three characters from the second half of `text` whose first occurrence is not at its
    start (the text with them as a stop string is then the non-empty part before them)."""
    for start in range(len(text) // 2, len(text) - 2):
        candidate = text[start:start + 3]
        if "\ufffd" not in candidate and candidate.strip() and text.find(candidate) > 0:
            return candidate, text[:text.find(candidate)]
    raise AssertionError(f"no usable stop string in {text!r}: choose a longer greedy output")


def check_usage(checks, usage, prompt_tokens, completion_tokens, what):
    checks.eq(usage.prompt_tokens, prompt_tokens, f"{what}: usage.prompt_tokens")
    checks.eq(usage.completion_tokens, completion_tokens, f"{what}: usage.completion_tokens")
    checks.eq(usage.total_tokens, prompt_tokens + completion_tokens, f"{what}: usage.total_tokens")


def check_stream(checks, chunks, text_of, case, what, include_usage):
    """A streamed single-choice answer: its pieces add up to the expected text, only the last
    choice chunk has a finish reason, and the usage chunk comes last exactly when asked."""
    with_choices = [chunk for chunk in chunks if chunk.choices]
    checks.true(len(with_choices) >= 2, f"{what}: {len(with_choices)} chunks with choices")
    checks.eq("".join(text_of(chunk.choices[0]) or "" for chunk in with_choices), case["text"], f"{what}: the deltas joined")
    checks.eq([chunk.choices[0].index for chunk in with_choices], [0] * len(with_choices), f"{what}: choice indices")
    finishes = [chunk.choices[0].finish_reason for chunk in with_choices]
    checks.eq(finishes[-1], case["finish_reason"], f"{what}: the last chunk's finish_reason")
    checks.eq(finishes[:-1], [None] * (len(finishes) - 1), f"{what}: finish_reason before the last chunk")
    usage_chunks = [chunk for chunk in chunks if getattr(chunk, "usage", None) is not None]
    if include_usage:
        checks.eq(len(usage_chunks), 1, f"{what}: chunks with usage")
        checks.true(chunks[-1] is usage_chunks[0], f"{what}: the usage chunk is the last")
        checks.eq(chunks[-1].choices, [], f"{what}: the usage chunk's choices")
        check_usage(checks, chunks[-1].usage, case["prompt_tokens"], case["completion_tokens"], what)
    else:
        checks.eq(len(usage_chunks), 0, f"{what}: chunks with usage (not asked)")


def generation(client, base_url, expected):
    checks = Checks()
    model = expected["model"]
    checks.eq([entry.id for entry in client.models.list().data], [model], "/v1/models")

    def complete(case, **options):
        """A completion of the case's prompt (its `max_tokens` unless None)."""
        if case["max_tokens"] is not None:
            options.setdefault("max_tokens", case["max_tokens"])
        return client.completions.create(model=model, prompt=case["prompt"], **options)

    def chat(case, **options):
        """A chat answer to the case's message as the user's one turn."""
        if case["max_tokens"] is not None:
            options.setdefault("max_tokens", case["max_tokens"])
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": case["message"]}], **options)

    include = {"stream_options": {"include_usage": True}}

    # Greedy completions: `rlhf generate`'s text, counts and end, streamed (with and without
    # usage) and not.
    for case in expected["completions"]:
        what = f"completion of {case['prompt']!r}"
        answer = complete(case, temperature=0)
        checks.eq(answer.object, "text_completion", f"{what}: object")
        checks.eq(answer.model, model, f"{what}: model")
        checks.eq(len(answer.choices), 1, f"{what}: choices")
        checks.eq(answer.choices[0].text, case["text"], f"{what}: text")
        checks.eq(answer.choices[0].finish_reason, case["finish_reason"], f"{what}: finish_reason")
        checks.eq(answer.choices[0].logprobs, None, f"{what}: logprobs (not asked)")
        check_usage(checks, answer.usage, case["prompt_tokens"], case["completion_tokens"], what)
        for include_usage in (False, True):
            chunks = list(complete(case, temperature=0, stream=True, **(include if include_usage else {})))
            check_stream(checks, chunks, lambda choice: choice.text, case, f"{what}, streamed", include_usage)

    # Greedy chat completions: `rlhf generate --chat`'s.
    for case in expected["chat"]:
        what = f"chat answer to {case['message']!r}"
        answer = chat(case, temperature=0)
        checks.eq(answer.object, "chat.completion", f"{what}: object")
        checks.eq(len(answer.choices), 1, f"{what}: choices")
        checks.eq(answer.choices[0].message.role, "assistant", f"{what}: role")
        checks.eq(answer.choices[0].message.content, case["text"], f"{what}: content")
        checks.eq(answer.choices[0].finish_reason, case["finish_reason"], f"{what}: finish_reason")
        check_usage(checks, answer.usage, case["prompt_tokens"], case["completion_tokens"], what)
        for include_usage in (False, True):
            chunks = list(chat(case, temperature=0, stream=True, **(include if include_usage else {})))
            checks.eq(chunks[0].object, "chat.completion.chunk", f"{what}, streamed: object")
            checks.eq(chunks[0].choices[0].delta.role, "assistant", f"{what}, streamed: the first delta's role")
            check_stream(checks, chunks, lambda choice: choice.delta.content, case, f"{what}, streamed", include_usage)

    # Without `max_tokens` a chat answer may fill the context: greedy's answer goes on.
    case = dict(expected["chat"][0], max_tokens=None)
    answer = chat(case, temperature=0)
    what = f"chat answer to {case['message']!r} without max_tokens"
    content = answer.choices[0].message.content
    checks.true(content.startswith(case["text"].rstrip("\ufffd")), f"{what}: {content!r} does not go on from {case['text']!r}")
    if answer.choices[0].finish_reason == "length":
        checks.eq(answer.usage.total_tokens, expected["context_length"], f"{what}: the context filled")
    else:
        checks.true(answer.usage.total_tokens < expected["context_length"], f"{what}: stopped within the context")

    # The raw stream: `data:` events of JSON chunks, `[DONE]` last.
    case = expected["completions"][0]
    request = {"model": model, "prompt": case["prompt"], "max_tokens": case["max_tokens"], "temperature": 0, "stream": True}
    events = server_sent_events(base_url, "/v1/completions", request)
    checks.eq(events[-1], "[DONE]", "the raw stream's last event")
    checks.eq("".join(json.loads(event)["choices"][0]["text"] for event in events[:-1]), case["text"], "the raw stream's text")

    # Stop strings: the text ends before the first occurrence, finish_reason `stop`.
    for case, endpoint in ((expected["completions"][0], "completions"), (expected["chat"][0], "chat")):
        stop, before = stop_string(case["text"])
        what = f"{endpoint} with stop {stop!r} (greedy text {case['text']!r})"
        request = complete if endpoint == "completions" else chat
        for stops in (stop, [stop, "never in the text \u2603"]):
            answer = request(case, temperature=0, stop=stops)
            choice = answer.choices[0]
            checks.eq(choice.text if endpoint == "completions" else choice.message.content, before, f"{what}: text")
            checks.eq(choice.finish_reason, "stop", f"{what}: finish_reason")
            tokens = answer.usage.completion_tokens
            checks.true(0 < tokens <= case["completion_tokens"], f"{what}: usage.completion_tokens {tokens}")
            chunks = list(request(case, temperature=0, stop=stops, stream=True))
            pieces = [chunk.choices[0].text if endpoint == "completions" else chunk.choices[0].delta.content for chunk in chunks]
            checks.eq("".join(piece or "" for piece in pieces), before, f"{what}, streamed: the deltas joined")
            checks.eq(chunks[-1].choices[0].finish_reason, "stop", f"{what}, streamed: finish_reason")

    # Sampling with a seed: n choices, the same again for the same seed, and the stream's the
    # same as the answer's.
    case = expected["completions"][1]
    first, again, other = (complete(case, max_tokens=8, temperature=1.0, seed=seed, n=3, logprobs=1) for seed in (1234, 1234, 99))
    what = f"3 samples of {case['prompt']!r} with seed 1234"
    checks.eq([choice.index for choice in first.choices], [0, 1, 2], f"{what}: indices")
    texts = [choice.text for choice in first.choices]
    checks.eq([choice.text for choice in again.choices], texts, f"{what}: the same seed again")
    checks.true(len(set(texts)) > 1, f"{what}: the 3 choices are not all alike: {texts}")
    checks.true([choice.text for choice in other.choices] != texts, f"{what}: another seed draws other choices")
    tokens = [len(choice.logprobs.tokens) for choice in first.choices]
    check_usage(checks, first.usage, case["prompt_tokens"], sum(tokens), f"{what} (usage counts every choice's tokens)")
    streamed = ["", "", ""]
    for chunk in complete(case, max_tokens=8, temperature=1.0, seed=1234, n=3, logprobs=1, stream=True):
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    checks.eq(streamed, texts, f"{what}, streamed")
    for choice in first.choices:
        for logprob, top in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs):
            checks.true(logprob <= max(top.values()) + 1e-9, f"{what}: a sampled token above the most likely one: {logprob} > {top}")
    case = expected["chat"][1]
    chat_samples = lambda: [choice.message.content for choice in chat(case, max_tokens=8, temperature=0.9, top_p=0.95, seed=7, n=3).choices]
    texts = chat_samples()
    checks.eq(len(texts), 3, "chat samples with seed 7")
    checks.eq(chat_samples(), texts, "chat samples with seed 7, again")

    # Log-probabilities: the asked number of alternatives, each ≤ 0, greedy's token the top one.
    case = expected["completions"][0]
    answer = complete(case, temperature=0, logprobs=3)
    logprobs = answer.choices[0].logprobs
    what = f"completion log-probs of {case['prompt']!r}"
    checks.eq(answer.choices[0].text, case["text"], f"{what}: text")
    for field in (logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, logprobs.text_offset):
        checks.eq(len(field), case["completion_tokens"], f"{what}: entries")
    checks.eq(logprobs.text_offset[0], 0, f"{what}: the first text_offset")
    checks.eq(logprobs.text_offset, sorted(logprobs.text_offset), f"{what}: text_offset grows")
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        checks.true(logprob <= 0, f"{what}: log-prob {logprob} > 0")
        # Alternatives whose text is alike (lone bytes of multi-byte characters, each read as
        # U+FFFD; special tokens, read as "") share a key, the likeliest one's value kept: the
        # dict may hold fewer, and greedy's token keeps its own value.
        checks.true(1 <= len(top) <= 3 and token in top, f"{what}: top_logprobs {top} for {token!r}")
        checks.true(max(top.values()) <= logprob + 1e-6, f"{what}: greedy's {token!r} ({logprob}) is not the most likely: {top}")
        checks.close(top[token], logprob, f"{what}: greedy's token {token!r} in top_logprobs")
        checks.true(all(value <= 0 for value in top.values()), f"{what}: top_logprobs {top}")
    checks.true(any(len(top) == 3 for top in logprobs.top_logprobs), f"{what}: 3 alternatives asked: {logprobs.top_logprobs}")

    case = expected["chat"][0]
    answer = chat(case, temperature=0, logprobs=True, top_logprobs=4)
    content = answer.choices[0].logprobs.content
    what = f"chat log-probs for {case['message']!r}"
    checks.eq(len(content), case["completion_tokens"], f"{what}: entries")
    for entry in content:
        checks.true(entry.logprob <= 0, f"{what}: log-prob {entry.logprob} > 0")
        checks.eq(len(entry.top_logprobs), 4, f"{what}: alternatives")
        values = [alternative.logprob for alternative in entry.top_logprobs]
        checks.eq(values, sorted(values, reverse=True), f"{what}: alternatives by likelihood")
        checks.eq(entry.top_logprobs[0].token, entry.token, f"{what}: greedy's token is the most likely")
        checks.close(entry.top_logprobs[0].logprob, entry.logprob, f"{what}: greedy's log-prob is the top one")
        checks.eq(bytes(entry.bytes), entry.token.encode(), f"{what}: bytes")
    streamed = [
        entry
        for chunk in chat(case, temperature=0, logprobs=True, top_logprobs=4, stream=True)
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content
    ]
    pairs = lambda entries: [(entry.token, entry.logprob) for entry in entries]
    checks.eq(pairs(streamed), pairs(content), f"{what}, streamed")
    return checks.count


def errors(client, base_url, expected):
    """Bad requests: the exception the client raises, and the body over raw HTTP."""
    checks = Checks()
    model, context = expected["model"], expected["context_length"]
    message = [{"role": "user", "content": "the battery?"}]
    over_limit = "review 1: the battery is great " * (expected["max_body_bytes"] // 20)
    invalid = "invalid_request_error"
    # 413 has no class of its own.
    bad, unknown, too_large = openai.BadRequestError, openai.NotFoundError, openai.APIStatusError
    other = "no-such-model"
    # (what, endpoint, body, status, the client's exception, error type, param, code)
    cases = [
        ("max_tokens of the wrong type", "completions", {"prompt": "a", "max_tokens": "ten"}, 400, bad, invalid, "max_tokens", None),
        ("temperature of the wrong type", "completions", {"prompt": "a", "temperature": "hot"}, 400, bad, invalid, "temperature", None),
        ("chat temperature of a wrong type", "chat", {"messages": message, "temperature": "hot"}, 400, bad, invalid, "temperature", None),
        ("an unknown model", "completions", {"model": other, "prompt": "a"}, 404, unknown, invalid, "model", "model_not_found"),
        ("an unknown model in chat", "chat", {"model": other, "messages": message}, 404, unknown, invalid, "model", "model_not_found"),
        ("max_tokens beyond the context", "completions", {"prompt": "a b", "max_tokens": context}, 400, bad, invalid, "max_tokens", None),
        ("chat max_tokens beyond the context", "chat", {"messages": message, "max_tokens": context}, 400, bad, invalid, "max_tokens", None),
        ("an empty messages list", "chat", {"messages": []}, 400, bad, invalid, "messages", None),
        ("a body over --max-body-bytes", "completions", {"prompt": over_limit}, 413, too_large, invalid, None, "body_too_large"),
    ]
    paths = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
    for what, endpoint, body, status, exception, kind, param, code in cases:
        body = {"model": model, **body}
        create = client.completions.create if endpoint == "completions" else client.chat.completions.create
        try:
            create(**body)
            raise AssertionError(f"{what}: the client raised nothing")
        except openai.APIStatusError as error:
            checks.eq(type(error), exception, f"{what}: the client's exception")
            checks.eq(error.status_code, status, f"{what}: the exception's status_code")
            checks.eq((error.type, error.param, error.code), (kind, param, code), f"{what}: the exception's type, param and code")
        got, payload = raw(base_url, "POST", paths[endpoint], body)
        check_error_body(checks, what, got, payload, status, kind, param, code)

    # What the client cannot send.
    for what, data in (("malformed JSON", b'{"model": "x", "prompt": '), ("a JSON list for a body", b"[1, 2]")):
        got, payload = raw(base_url, "POST", "/v1/completions", data=data)
        check_error_body(checks, what, got, payload, 400, invalid, "body", None)
    # A language model serves no scores.
    got, payload = raw(base_url, "POST", "/v1/score", {"items": [{"prompt": "a", "response": "b"}]})
    check_error_body(checks, "/v1/score on a language model", got, payload, 404, invalid, None, "not_found")
    # The server still answers, `model` or not.
    status, payload = raw(base_url, "POST", "/v1/completions", {"prompt": "a b", "max_tokens": 2})
    checks.eq((status, len(json.loads(payload)["choices"])), (200, 1), f"a request without `model`: {payload!r}")
    answer = client.completions.create(model=model, prompt="a b", max_tokens=2, temperature=0)
    checks.eq(len(answer.choices), 1, "a good request after the bad ones")
    checks.eq(raw(base_url, "GET", "/health"), (200, b'{"status":"ok"}'), "/health")
    return checks.count


def check_error_body(checks, what, status, payload, want_status, kind, param, code):
    checks.eq(status, want_status, f"{what}: status over raw HTTP ({payload!r})")
    body = json.loads(payload)
    checks.eq(sorted(body), ["error"], f"{what}: the body's keys")
    error = body["error"]
    checks.eq(sorted(error), ["code", "message", "param", "type"], f"{what}: the error's keys")
    checks.true(isinstance(error["message"], str) and error["message"], f"{what}: the error's message {error['message']!r}")
    checks.eq((error["type"], error["param"], error["code"]), (kind, param, code), f"{what}: the error's type, param and code")


SCENARIOS = {"generation": generation, "errors": errors}


def main():
    base_url, scenario, expected_path = sys.argv[1:4]
    with open(expected_path) as file:
        expected = json.load(file)
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=60)
    count = SCENARIOS[scenario](client, base_url, expected)
    print(json.dumps({"checks": count}))


if __name__ == "__main__":
    main()
