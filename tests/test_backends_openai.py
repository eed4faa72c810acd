import asyncio
import time

import pytest

from mtr.backends import BackendError, OpenAIBackend, SamplingParams
from mtr.config import RoleConfig

from servers import FakeServer, free_port, llama_server

Q = [{"role": "user", "content": "What is the capital of France?"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}


@pytest.fixture(scope="module")
def server_url():
    with llama_server() as url:
        yield url


def backend(url, **kw):
    return OpenAIBackend(RoleConfig(backend="openai", model="smollm2", base_url=url, **kw))


@pytest.mark.model
def test_real_llama_server_chat(server_url):
    b = backend(server_url)
    b.load()  # GET /models answers and knows the model
    [c] = asyncio.run(b.chat(Q, SamplingParams(temperature=0, max_tokens=16)))
    assert c.text.strip() and 0 < c.completion_tokens <= 16 and c.finish_reason in ("stop", "length")


@pytest.mark.model
def test_real_llama_server_json_schema(server_url):
    b = backend(server_url)  # asks json_schema first; llama.cpp rejects it, the backend falls back
    outs = asyncio.run(b.chat(Q, SamplingParams(n=2, temperature=0.7, max_tokens=40, json_schema=SCHEMA, seed=3)))
    assert len(outs) == 2
    for c in outs:
        assert c.json_error is None, c.text
        assert isinstance(c.json["city"], str)
    assert b._json_mode == "json_object"


@pytest.mark.model
def test_requests_in_flight_are_bounded(server_url):
    b = backend(server_url, max_concurrency=2)
    sem_values = []

    async def go():
        task = asyncio.create_task(b.generate([Q] * 5, SamplingParams(temperature=0, max_tokens=4)))
        while not task.done():
            if b._sem is not None:
                sem_values.append(b._sem._value)
            await asyncio.sleep(0.01)
        return await task

    outs = asyncio.run(go())
    assert len(outs) == 5 and all(o[0].text for o in outs)
    assert min(sem_values) == 0  # the bound was reached and never exceeded (a Semaphore cannot go below 0)


def test_unreachable_server_is_one_line():
    b = backend(f"http://127.0.0.1:{free_port()}/v1", max_retries=1, timeout_s=2)
    with pytest.raises(BackendError) as e:
        asyncio.run(b.chat(Q))
    assert "cannot reach the server" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(BackendError, match="cannot reach"):
        b.load()


def test_non_json_reply_where_json_was_required():
    srv = FakeServer("prose")
    try:
        [c] = asyncio.run(backend(srv.url).chat(Q, SamplingParams(json_schema=SCHEMA)))
        assert c.json is None and c.json_error.startswith("not JSON")
        with pytest.raises(BackendError, match="returned non-JSON where JSON was required"):
            c.require_json("toolactor")
        assert srv.requests[0]["response_format"]["json_schema"]["schema"] == SCHEMA
    finally:
        srv.close()


def test_5xx_is_retried_with_backoff_then_one_line_error():
    srv = FakeServer("error500")
    try:
        t = time.perf_counter()
        with pytest.raises(BackendError, match="HTTP 500"):
            asyncio.run(backend(srv.url, max_retries=2).chat(Q))
        assert len(srv.requests) == 3  # first try + 2 retries
        assert time.perf_counter() - t > 0.5  # the client waited between tries
    finally:
        srv.close()


def test_timeout_is_one_line():
    srv = FakeServer("slow")
    try:
        with pytest.raises(BackendError, match="timed out after 0.5s"):
            asyncio.run(backend(srv.url, timeout_s=0.5, max_retries=0).chat(Q))
    finally:
        srv.close()


def test_api_key_is_sent_but_never_shown(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-secret-123")
    srv = FakeServer("error500")
    try:
        b = backend(srv.url, api_key_env="MY_KEY", max_retries=0)
        with pytest.raises(BackendError) as e:
            asyncio.run(b.chat(Q))
        headers = {k.lower(): v for k, v in srv.headers[0].items()}
        assert headers["authorization"] == "Bearer sk-secret-123"
        assert "sk-secret" not in str(e.value) and "sk-secret" not in b.describe()
        assert "sk-secret" not in repr(b.cfg.model_dump())
    finally:
        srv.close()


def test_tool_messages_are_sent_in_openai_shape():
    srv = FakeServer("prose")
    try:
        msgs = Q + [{"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "id": "c1", "function": {"name": "search", "arguments": {"q": "x"}}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "{}"}]
        asyncio.run(backend(srv.url).chat(msgs))
        sent = srv.requests[0]["messages"][1]["tool_calls"][0]["function"]
        assert sent == {"name": "search", "arguments": '{"q": "x"}'}
    finally:
        srv.close()
