"""Real tools: a local BM25 retriever over a passage corpus, and a client for a retrieval server.

A corpus is a JSONL file of passages (`id`, `title`, `text`). `build_corpus` makes one, with its BM25 index
(bm25s, English stop words, Snowball stemming), from the paragraphs of QA files (deduplicated by title and
text); `default_corpus()` builds the shipped data's (HotpotQA, 2WikiMultihopQA, MuSiQue) once under
`$MTR_HOME/corpora/`, like the embedded model. Any corpus in that format (a Wikipedia dump) works the same.

`RemoteRetriever` speaks the retrieval-server protocol of the Search-R1 line of work (`POST /retrieve` with
`queries`, `topk`, `return_scores`; passages back as `{"document": {"id", "contents"}, "score"}` with
`contents` = `"Title"\\ntext`), so a GPU user points `search` at an E5 index of Wikipedia.

    retriever = make_retriever(cfg.retriever)
    [[passage, ...]] = await retriever.search(["Moscow State University founded"], k=3)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MAX_QUERY_TOKENS = 256  # a longer query is cut: BM25 cost grows with it and its tail adds nothing


class CorpusError(ValueError):
    """A corpus that cannot be used; one line naming the file, the line and the field."""


class RetrieverError(RuntimeError):
    """A retrieval that failed (server down, slow, garbage); one line."""


@dataclass
class Passage:
    id: str
    title: str
    text: str
    score: float = 0.0

    def brief(self, max_chars: int) -> dict[str, str]:
        """The passage as a `search` observation shows it: title and text, cut to `max_chars`."""
        text = self.text if len(self.text) <= max_chars else self.text[:max_chars - 3].rstrip() + "..."
        return {"title": self.title, "text": text}


def passage_id(title: str, text: str) -> str:
    return hashlib.sha1(f"{title}\n{text}".encode("utf-8")).hexdigest()[:16]


def read_corpus(path: Path) -> list[Passage]:
    """Read a corpus JSONL strictly: every problem names the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such corpus file")
    passages, seen = [], {}
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: not UTF-8 (byte {e.start})") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise CorpusError(f"{path}:{lineno}: expected a JSON object")
            pid = rec.get("id")
            if not isinstance(pid, (str, int)) or isinstance(pid, bool) or not str(pid).strip():
                raise CorpusError(f"{path}:{lineno}: field id: a non-empty string or integer is required")
            text = rec.get("text")
            if not isinstance(text, str) or not text.strip():
                raise CorpusError(f"{path}:{lineno}: field text: a non-empty string is required")
            title = rec.get("title", "")
            if not isinstance(title, str):
                raise CorpusError(f"{path}:{lineno}: field title: a string is required")
            if str(pid) in seen:
                raise CorpusError(f"{path}:{lineno}: duplicate id {pid!r} (first on line {seen[str(pid)]})")
            seen[str(pid)] = lineno
            passages.append(Passage(str(pid), title, text))
    if not passages:
        raise CorpusError(f"{path}: an empty corpus (no passages)")
    return passages


def passages_from_qa(paths: list[Path]) -> list[Passage]:
    """The paragraphs of QA files' `context` (title and text, or sentences), deduplicated by title and text."""
    from mtr.data import load_qa

    out: dict[str, Passage] = {}
    for path in paths:
        for ex in load_qa(path):
            for p in ex.context or []:
                title = str(p.get("title") or "")
                text = p.get("text") or "".join(p.get("sentences") or [])
                if isinstance(text, str) and text.strip():
                    pid = passage_id(title, text.strip())
                    out.setdefault(pid, Passage(pid, title, text.strip()))
    return list(out.values())


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def _tokenize(texts: list[str]) -> Any:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", stemmer=_stemmer(), show_progress=False)


def build_corpus(sources: list[Path], out_dir: Path, passages: list[Passage] | None = None) -> dict[str, Any]:
    """`out_dir/corpus.jsonl` and its BM25 index, from QA files' paragraphs (or the given passages).
    Written into a temporary folder and moved into place whole, so a crash never leaves half an index."""
    import bm25s

    t0 = time.perf_counter()
    passages = passages if passages is not None else passages_from_qa(sources)
    if not passages:
        raise CorpusError(f"{', '.join(map(str, sources))}: no paragraphs to index (no `context` in these QA files)")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".corpus-", dir=out_dir.parent))
    try:
        with (tmp / "corpus.jsonl").open("w", encoding="utf-8") as f:
            for p in passages:
                f.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}, ensure_ascii=False) + "\n")
        index = bm25s.BM25()
        index.index(_tokenize([f"{p.title} {p.text}" for p in passages]), show_progress=False)
        index.save(tmp / "index", show_progress=False)
        meta = {"passages": len(passages), "build_s": round(time.perf_counter() - t0, 2),
                "sources": [{"path": str(s), "sha256": _sha(s)} for s in sources],
                "tokenizer": "bm25s, English stop words, Snowball English stemmer"}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def _sha(path: Path) -> str:
    from mtr.embedded import file_sha256

    return file_sha256(path)


DEFAULT_SOURCES = ("hotpotqa", "2wiki", "musique")


def default_sources() -> list[Path]:
    """The shipped QA files whose records carry paragraphs (MuSiQue's are in a separate file)."""
    from mtr.data import data_dirs, source_file

    paths = [source_file("hotpotqa"), source_file("2wiki")]
    for d in data_dirs():
        if (d / "musique_dev_first400_ctx.jsonl").is_file():
            paths.append(d / "musique_dev_first400_ctx.jsonl")
            break
    return paths


def default_corpus() -> Path:
    """The shipped data's corpus and index, built once under $MTR_HOME/corpora/ (keyed by the sources'
    content, so new data builds a new one)."""
    from mtr.embedded import mtr_home

    sources = default_sources()
    key = hashlib.sha256("".join(_fingerprint(p) for p in sources).encode()).hexdigest()[:12]
    out = mtr_home() / "corpora" / f"default-{key}"
    if not (out / "meta.json").is_file():
        build_corpus(sources, out)
    return out


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{path.name}:{st.st_size}:{int(st.st_mtime)}"


def resolve_corpus(name: str) -> Path:
    """`default`, a corpus directory (corpus.jsonl + index/), or a corpus.jsonl (indexed beside it, once)."""
    if name == "default":
        return default_corpus()
    p = Path(name).expanduser()
    if p.is_dir() and (p / "corpus.jsonl").is_file():
        if not (p / "index").is_dir():
            build_corpus([], p, passages=read_corpus(p / "corpus.jsonl"))
        return p
    if p.is_file():
        out = p.parent / f"{p.stem}.bm25"
        if not (out / "meta.json").is_file():
            build_corpus([p], out, passages=read_corpus(p))
        return out
    raise CorpusError(f"retriever.corpus: {p} is neither `default`, a corpus directory nor a corpus JSONL file")


class Retriever:
    """Passages for queries; `search` takes a batch."""

    name = "retriever"

    async def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        raise NotImplementedError

    async def lookup(self, title: str, k: int) -> list[Passage]:
        """The passages whose title is `title` (case and punctuation aside): a search for it, kept if the
        titles match."""
        [found] = await self.search([title], 4 * k)
        want = _norm_title(title)
        return [p for p in found if _norm_title(p.title) == want][:k]

    def describe(self) -> str:
        return self.name

    async def aclose(self) -> None:
        pass


class BM25Retriever(Retriever):
    name = "bm25"

    def __init__(self, corpus_dir: Path):
        import bm25s

        self.dir = Path(corpus_dir)
        self.passages = read_corpus(self.dir / "corpus.jsonl")
        self.index = bm25s.BM25.load(self.dir / "index", show_progress=False)
        meta = json.loads((self.dir / "meta.json").read_text()) if (self.dir / "meta.json").is_file() else {}
        self.meta = meta

    def describe(self) -> str:
        return f"bm25 over {self.dir.name} ({len(self.passages)} passages)"

    async def lookup(self, title: str, k: int) -> list[Passage]:
        if not hasattr(self, "_by_title"):
            self._by_title: dict[str, list[Passage]] = {}
            for passage in self.passages:
                self._by_title.setdefault(_norm_title(passage.title), []).append(passage)
        return self._by_title.get(_norm_title(title), [])[:k]

    def search_now(self, queries: list[str], k: int) -> list[list[Passage]]:
        """The blocking search (a batch of queries in one call)."""
        out: list[list[Passage]] = [[] for _ in queries]
        cut = [" ".join(q.split()[:MAX_QUERY_TOKENS]) for q in queries]
        live = [i for i, q in enumerate(cut) if q.strip()]
        if not live:
            return out
        tokens = _tokenize([cut[i] for i in live])
        k = max(1, min(k, len(self.passages)))
        # numpy's top-k, as on a machine without JAX: bm25s would pick JAX where it is installed, and put the
        # scores on a GPU the policy is using, for a choice among a few thousand passages
        docs, scores = self.index.retrieve(tokens, k=k, show_progress=False, n_threads=1, backend_selection="numpy")
        for row, i in enumerate(live):
            out[i] = [Passage(**{**asdict(self.passages[int(d)]), "score": float(s)})
                      for d, s in zip(docs[row], scores[row]) if float(s) > 0]
        return out

    async def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        return await asyncio.to_thread(self.search_now, queries, k)


class RemoteRetriever(Retriever):
    """A retrieval server (`POST {url}` with `queries`, `topk`, `return_scores`), retried with exponential
    backoff; what it still cannot answer is a RetrieverError (the episode counts a tool failure)."""

    name = "remote"

    def __init__(self, url: str, timeout_s: float = 30.0, max_retries: int = 3, backoff_s: float = 0.5):
        self.url, self.timeout_s, self.max_retries, self.backoff_s = url, timeout_s, max_retries, backoff_s
        self._client: Any = None
        self._loop: Any = None

    def describe(self) -> str:
        return f"remote retriever at {self.url}"

    def _http(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client, self._loop = httpx.AsyncClient(timeout=self.timeout_s), loop
        return self._client

    async def search(self, queries: list[str], k: int) -> list[list[Passage]]:
        import httpx

        body = {"queries": queries, "topk": k, "return_scores": True}
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                r = await self._http().post(self.url, json=body)
            except httpx.TimeoutException:
                last = f"no answer within {self.timeout_s:g}s"
                continue
            except httpx.HTTPError as e:
                last = f"cannot reach the server ({type(e).__name__})"
                continue
            if r.status_code >= 500 or r.status_code == 429:
                last = f"HTTP {r.status_code}"
                continue
            if r.status_code != 200:
                raise RetrieverError(f"{self.describe()}: HTTP {r.status_code}: {' '.join(r.text.split())[:160]}")
            try:
                return parse_remote(r.json(), len(queries))
            except (ValueError, KeyError, TypeError) as e:
                last = f"a reply that is not the retrieval protocol ({' '.join(str(e).split())[:120]})"
        raise RetrieverError(f"{self.describe()}: {last} ({self.max_retries} retries)")

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = None


def _norm_title(title: str) -> str:
    from mtr.metrics import normalize_answer

    return normalize_answer(title)


def parse_remote(reply: Any, n: int) -> list[list[Passage]]:
    """The Search-R1 server's reply: {"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}."""
    rows = reply["result"]
    if not isinstance(rows, list) or len(rows) != n:
        raise ValueError(f"expected {n} result lists, got {len(rows) if isinstance(rows, list) else type(rows)}")
    out = []
    for row in rows:
        passages = []
        for item in row:
            doc = item["document"] if "document" in item else item
            contents = str(doc["contents"])
            title, _, text = contents.partition("\n")
            passages.append(Passage(str(doc.get("id", passage_id(title, text))), title.strip().strip('"'),
                                    text.strip(), float(item.get("score", 0.0))))
        out.append(passages)
    return out


def make_retriever(rc: Any) -> Retriever:
    """The retriever of the config's `retriever` section."""
    if rc.kind == "remote":
        if not rc.url:
            raise CorpusError("retriever.url: a remote retriever needs the server's address (e.g. "
                              "http://127.0.0.1:8000/retrieve)")
        return RemoteRetriever(rc.url, rc.timeout_s, rc.max_retries)
    return BM25Retriever(resolve_corpus(rc.corpus))
