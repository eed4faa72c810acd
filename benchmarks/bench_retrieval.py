"""The local retriever: building the default corpus's index, and answering queries.

    .venv/bin/python benchmarks/bench_retrieval.py [--queries 500] [--batch 32]

Builds the shipped data's corpus (HotpotQA, 2WikiMultihopQA, MuSiQue paragraphs) in a fresh process, for its
build time and peak memory; then, in another, loads it and answers the questions of HotpotQA as queries:
one at a time (latency, median and p99) and in batches (queries/s). Figures go to stdout and
`benchmarks/results/retrieval.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BUILD = r"""
import json, resource, sys, time
from pathlib import Path
from mtr.retrieval import build_corpus, default_sources
t0 = time.perf_counter()
meta = build_corpus(default_sources(), Path(sys.argv[1]))
print(json.dumps({"passages": meta["passages"], "build_s": time.perf_counter() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "sources": [s["path"] for s in meta["sources"]]}))
"""

QUERY = r"""
import json, resource, statistics, sys, time
from pathlib import Path
from mtr.data import load_qa, resolve_benchmark
from mtr.retrieval import BM25Retriever
t0 = time.perf_counter()
r = BM25Retriever(Path(sys.argv[1]))
load_s = time.perf_counter() - t0
queries = [ex.question for ex in load_qa(resolve_benchmark("hotpotqa"))][: int(sys.argv[2])]
batch = int(sys.argv[3])
lat = []
for q in queries:
    t = time.perf_counter()
    r.search_now([q], 3)
    lat.append(time.perf_counter() - t)
t = time.perf_counter()
for i in range(0, len(queries), batch):
    r.search_now(queries[i:i + batch], 3)
batched = time.perf_counter() - t
lat.sort()
print(json.dumps({"load_s": load_s, "queries": len(queries), "median_ms": 1000 * statistics.median(lat),
                  "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                  "one_at_a_time_qps": len(queries) / sum(lat), "batch": batch,
                  "batched_qps": len(queries) / batched,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(code: str, *args: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", default="benchmarks/results/retrieval.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        build = child(BUILD, str(Path(d) / "corpus"))
        query = child(QUERY, str(Path(d) / "corpus"), str(args.queries), str(args.batch))
    res = {"build": build, "query": query}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"index: {build['passages']} passages in {build['build_s']:.1f} s, peak RSS {build['peak_rss_mb']:.0f} MB")
    print(f"query: load {query['load_s']:.1f} s; latency median {query['median_ms']:.1f} ms, p99 {query['p99_ms']:.1f} "
          f"ms; {query['one_at_a_time_qps']:.0f} queries/s one at a time, {query['batched_qps']:.0f} in batches "
          f"of {query['batch']}; peak RSS {query['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
