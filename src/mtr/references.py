"""Published EM numbers on the four multi-hop benchmarks, for orientation beside a run's table.

They come from other systems (different models, a real retriever over Wikipedia-2018 or Google): never
tune anything to them. Each row says which tools answered its questions at test time, so a simulated-tools
figure is not read as a live one. Sources and caveats are in docs/evaluation.md. EM x 100; None = not
published.
"""

REFERENCE_EM: list[dict] = [
    {"system": "MTR (paper), tools-on", "tools": "not stated in the summary (trained against simulated tools)", "model": "not stated", "source": "arXiv 2510.06825",
     "hotpotqa": None, "2wiki": None, "musique": None, "bamboogle": 40.0, "avg": 29.38},
    {"system": "MTR (paper), tools-off", "tools": "none", "model": "not stated", "source": "arXiv 2510.06825",
     "hotpotqa": None, "2wiki": None, "musique": None, "bamboogle": 20.7, "avg": None},
    {"system": "Search-R1-base (PPO)", "tools": "live: E5 retriever over a 2018 Wikipedia dump, top 3 passages", "model": "Qwen2.5-7B", "source": "arXiv 2503.09516v5",
     "hotpotqa": 43.3, "2wiki": 38.2, "musique": 19.6, "bamboogle": 43.2, "avg": 36.1},
    {"system": "Search-R1-instruct (PPO)", "tools": "live: E5 retriever over a 2018 Wikipedia dump, top 3 passages", "model": "Qwen2.5-7B-Instruct", "source": "arXiv 2503.09516v5",
     "hotpotqa": 37.0, "2wiki": 41.4, "musique": 14.6, "bamboogle": 36.8, "avg": 32.5},
    {"system": "Direct inference", "tools": "none", "model": "Qwen2.5-7B", "source": "arXiv 2503.09516v5",
     "hotpotqa": 18.3, "2wiki": 25.0, "musique": 3.1, "bamboogle": 12.0, "avg": 14.6},
    {"system": "RAG (E5, top 3)", "tools": "one retrieval up front: E5 over a 2018 Wikipedia dump, top 3 passages", "model": "Qwen2.5-7B", "source": "arXiv 2503.09516v5",
     "hotpotqa": 29.9, "2wiki": 23.5, "musique": 5.8, "bamboogle": 20.8, "avg": 20.0},
    {"system": "ZeroSearch-base", "tools": "live at test time (an LLM simulated the search engine in training only)", "model": "Qwen2.5-7B", "source": "arXiv 2505.04588v3",
     "hotpotqa": 32.0, "2wiki": 34.0, "musique": 18.0, "bamboogle": 33.33, "avg": 29.33},
]
