"""The real tools: the BM25 corpus and retriever, and the retrieval-server client."""

import asyncio
import json

import pytest

from mtr.retrieval import (BM25Retriever, CorpusError, Passage, RemoteRetriever, RetrieverError, build_corpus,
                           passages_from_qa, read_corpus)

from servers import FakeRetrievalServer

PASSAGES = [
    {"id": "1", "title": "Moscow State University", "text": "Lomonosov Moscow State University was founded in 1755 "
                                                            "by Mikhail Lomonosov."},
    {"id": "2", "title": "Sergei Tokarev", "text": "Sergei Aleksandrovich Tokarev was a Russian ethnographer and a "
                                                   "professor at Moscow State University."},
    {"id": "3", "title": "Cahiers du cinema", "text": "Cahiers du cinema is a French film magazine founded in 1951."},
]


def corpus_file(tmp_path, passages=PASSAGES):
    p = tmp_path / "corpus.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in passages))
    return p


@pytest.fixture
def retriever(tmp_path):
    build_corpus([], tmp_path / "c", passages=read_corpus(corpus_file(tmp_path)))
    return BM25Retriever(tmp_path / "c")


def test_bm25_finds_the_passage_that_answers(retriever):
    [first, second] = asyncio.run(retriever.search(["When was Moscow State University founded?",
                                                    "Tokarev professor"], k=2))
    assert first[0].title == "Moscow State University" and "1755" in first[0].text
    assert second[0].title == "Sergei Tokarev" and all(p.score > 0 for p in second)


def test_the_search_never_picks_jax_where_it_is_installed(retriever, monkeypatch):
    """bm25s's `auto` top-k is JAX's wherever JAX is installed (on a GPU machine, on the policy's GPU); the
    retriever asks for numpy's, as on a machine without it, so the same corpus ranks alike everywhere."""
    import bm25s.selection

    monkeypatch.setattr(bm25s.selection, "JAX_IS_AVAILABLE", True)  # as on a machine with JAX

    def no_jax(*args, **kwargs):
        raise AssertionError("the search asked JAX for its top-k")

    monkeypatch.setattr(bm25s.selection, "_topk_jax", no_jax)
    [first] = retriever.search_now(["When was Moscow State University founded?"], k=2)
    assert first[0].title == "Moscow State University"


def test_empty_and_huge_queries(retriever):
    [empty, stop_words, huge] = retriever.search_now(["", "the of and", "founded " * 10_000], k=3)
    assert empty == [] and stop_words == []
    assert huge and huge[0].title in {"Moscow State University", "Cahiers du cinema"}


def test_corpus_from_qa_files_is_deduplicated(tmp_path):
    rec = {"id": "q", "question": "?", "answers": ["a"],
           "context": [{"title": "T", "text": "Same text."}, {"title": "T", "text": "Same text."},
                       {"title": "U", "sentences": ["One. ", "Two."]}]}
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "id": "r"}) + "\n")
    passages = passages_from_qa([qa])
    assert sorted(p.title for p in passages) == ["T", "U"] and passages[1].text == "One. Two."
    meta = build_corpus([qa], tmp_path / "c")
    assert meta["passages"] == 2 and meta["sources"][0]["sha256"]
    assert len(read_corpus(tmp_path / "c" / "corpus.jsonl")) == 2


@pytest.mark.parametrize("content,msg", [
    ('{"id": "a", "title": "t", "text": "x"}\n{"id": "b", "title": "t"}\n', r"corpus.jsonl:2: field text"),
    ('{"id": "", "title": "t", "text": "x"}\n', r"corpus.jsonl:1: field id"),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', r"corpus.jsonl:2: duplicate id 'a'"),
    ('{"id": "a", "text": "x"}\n{"id": "b", "te', r"corpus.jsonl:2: malformed JSON"),
    ("\n\n", r"an empty corpus"),
])
def test_bad_corpus_lines_name_the_line(tmp_path, content, msg):
    p = tmp_path / "corpus.jsonl"
    p.write_text(content)
    with pytest.raises(CorpusError, match=msg):
        read_corpus(p)


def test_non_utf8_corpus_names_the_line(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"corpus.jsonl:2: not UTF-8"):
        read_corpus(p)


def test_remote_retriever_speaks_the_search_r1_protocol():
    server = FakeRetrievalServer(PASSAGES)
    try:
        [[p, *_]] = asyncio.run(RemoteRetriever(server.url).search(["Cahiers du cinema magazine"], k=2))
        assert isinstance(p, Passage) and p.title == "Cahiers du cinema" and p.text.startswith("Cahiers")
        assert server.requests == [{"queries": ["Cahiers du cinema magazine"], "topk": 2, "return_scores": True}]
    finally:
        server.close()


def test_remote_retriever_retries_then_fails_in_one_line():
    flaky = FakeRetrievalServer(PASSAGES, mode="down-once")
    try:  # a 503 is retried after a backoff
        [[p, *_]] = asyncio.run(RemoteRetriever(flaky.url, backoff_s=0.01).search(["founded 1755"], k=1))
        assert "1755" in p.text and len(flaky.requests) == 2
    finally:
        flaky.close()
    for mode, msg in (("garbage", "not the retrieval protocol"), ("down", "HTTP 503"), ("error400", "HTTP 400")):
        server = FakeRetrievalServer(PASSAGES, mode=mode)
        try:
            with pytest.raises(RetrieverError, match=msg) as e:
                asyncio.run(RemoteRetriever(server.url, max_retries=2, backoff_s=0.01).search(["x"], k=1))
            assert "\n" not in str(e.value)
        finally:
            server.close()
    slow = FakeRetrievalServer(PASSAGES, mode="slow")
    try:
        with pytest.raises(RetrieverError, match=r"no answer within 0.3s \(1 retries\)"):
            asyncio.run(RemoteRetriever(slow.url, timeout_s=0.3, max_retries=1, backoff_s=0.01).search(["x"], k=1))
    finally:
        slow.close()


def test_a_server_that_is_down_is_one_line():
    from servers import free_port

    with pytest.raises(RetrieverError, match="cannot reach the server"):
        asyncio.run(RemoteRetriever(f"http://127.0.0.1:{free_port()}/retrieve", max_retries=1,
                                    backoff_s=0.01).search(["x"], k=1))
