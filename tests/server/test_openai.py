"""`tandem serve` driven by the official `openai` client: the answers, the
streams, usage, stop strings, seeds, concurrency (greedy results equal
solo runs), cancellation freeing pages, 429 on a full queue, 400s."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

PROMPTS = [
    "The Python language is",
    "A list is a mutable sequence of items, and a tuple",
    "Exceptions are raised when",
    "To define a function in Python you write",
    "Once upon a time",
    "The capital of France",
    "def fibonacci(n):",
    "import numpy as np\n",
]


def complete(client, prompt, **kw):
    r = client.completions.create(model="tiny", prompt=prompt, **kw)
    return r


def test_models(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny-qwen2-Q8_0"]


def test_completion_and_usage(server):
    r = complete(server.client(), PROMPTS[0], max_tokens=16, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason in ("stop", "length")
    u = r.usage
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens <= 16
    # The same prompt again: its full pages come from the prefix cache.
    r2 = complete(server.client(), PROMPTS[0], max_tokens=16, temperature=0)
    assert r2.choices[0].text == r.choices[0].text
    assert r2.usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_stream_equals_whole_and_reports_usage(server):
    c = server.client()
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Say hello."}]},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again, please."},
    ]
    whole = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=20, temperature=0)
    stream = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=20, temperature=0,
                                       stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_stop_strings_are_cut_and_never_streamed(server):
    c = server.client()
    full = complete(c, PROMPTS[0], max_tokens=24, temperature=0).choices[0].text
    words = [w for w in full.split(" ") if len(w) >= 2]
    if not words:
        pytest.skip("the fixture's text has no word to stop at")
    stop = words[len(words) // 2]
    cut = full[: full.index(stop)]
    r = complete(c, PROMPTS[0], max_tokens=24, temperature=0, stop=[stop])
    assert r.choices[0].text == cut
    assert r.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in
                       complete(c, PROMPTS[0], max_tokens=24, temperature=0, stop=stop, stream=True)
                       if ch.choices)
    assert streamed == cut


def test_seeds_reproduce(server):
    c = server.client()
    a = complete(c, PROMPTS[4], max_tokens=20, temperature=1.0, seed=1234).choices[0].text
    b = complete(c, PROMPTS[4], max_tokens=20, temperature=1.0, seed=1234).choices[0].text
    assert a == b


def test_sixteen_concurrent_clients_equal_solo_runs(server):
    c = server.client()
    kw = dict(max_tokens=24, temperature=0)
    solo = {p: complete(c, p, **kw).choices[0].text for p in PROMPTS}
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(16)]

    def one(p):
        return p, server.client().completions.create(model="tiny", prompt=p, **kw).choices[0].text

    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(one, jobs))
    for p, text in results:
        assert text == solo[p], p


def wait_idle(server, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.metric("tandem:num_requests_running") == 0 and \
                server.metric("tandem:kv_cache_usage_perc") == 0:
            return True
        time.sleep(0.05)
    return False


def test_a_disconnected_client_frees_its_pages(server):
    c = server.client()
    stream = c.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=900, temperature=0,
                                  stream=True, extra_body={"ignore_eos": True})
    got = 0
    for chunk in stream:
        got += 1
        if got == 3:
            break
    stream.close()
    assert wait_idle(server), server.get("/metrics").text


def test_a_full_queue_answers_429(small_server):
    c = small_server.client(max_retries=0)
    started = threading.Event()
    streams = []

    def hold():
        s = c.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=8000, temperature=0,
                                 stream=True, extra_body={"ignore_eos": True})
        streams.append(s)
        next(iter(s))
        started.set()

    # One running (max-batch 1), one waiting (max-queue 1); while the first
    # runs (thousands of tokens), a burst of further requests must meet a
    # full queue. (A burst, not one request: it does not depend on how fast
    # this machine decodes.)
    t = threading.Thread(target=hold)
    t.start()
    assert started.wait(30)
    waiting = c.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=8000, temperature=0,
                                   stream=True, extra_body={"ignore_eos": True})
    time.sleep(0.2)
    refused = []

    def extra():
        try:
            complete(c, PROMPTS[4], max_tokens=4)
        except openai.RateLimitError as e:
            refused.append(e)

    burst = [threading.Thread(target=extra) for _ in range(4)]
    for b in burst:
        b.start()
    for b in burst:
        b.join()
    assert refused, "no request was refused while the queue was full"
    assert all(e.response.headers.get("retry-after") == "1" for e in refused)
    waiting.close()
    for s in streams:
        s.close()
    t.join()
    assert wait_idle(small_server)


def test_bad_requests(server):
    c = server.client(max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        complete(c, "word " * 2000, max_tokens=4)
    assert "This model's maximum context length is 1024 tokens. However, you requested" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        complete(c, PROMPTS[0], n=2)
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{oops",
                   headers={"Authorization": "Bearer test-key"})
    assert r.status_code == 400 and "error" in r.json()
    r = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                             "max_tokens": "many"})
    assert r.status_code == 400
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server.url + "/health").status_code == 200


def test_tokenize_detokenize(server):
    t = server.post("/tokenize", {"content": "Hello world"}).json()["tokens"]
    assert t and all(isinstance(i, int) for i in t)
    assert server.post("/detokenize", {"tokens": t}).json()["content"] == "Hello world"


def test_metrics_names(server):
    text = server.get("/metrics").text
    for name in ["tandem:time_to_first_token_seconds_bucket", "tandem:inter_token_latency_seconds_sum",
                 "tandem:e2e_request_latency_seconds_count", "tandem:request_queue_time_seconds_count",
                 "tandem:num_requests_running", "tandem:num_requests_waiting",
                 "tandem:kv_cache_usage_perc", "tandem:prefix_cache_queries_total",
                 "tandem:prefix_cache_hits_total", "tandem:num_preemptions_total",
                 "tandem:prompt_tokens_total", "tandem:generation_tokens_total",
                 "tandem:request_success_total"]:
        assert name in text, name
