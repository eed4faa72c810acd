"""mtr: teach language models to use tools without live APIs (models as tools, SFT then GRPO)."""

import os

# torch and llama.cpp each keep an OpenMP thread pool in one mtr process (the policy on transformers, the
# ToolMaker and ToolActor on llama.cpp), and on a small machine other jobs share the cores. OpenMP's default
# busy-waiting then burns the cycles the other pool needs, so mtr waits passively; on a machine given to one
# mtr job `OMP_WAIT_POLICY=` (empty) takes back what that costs (figures in docs/performance.md). It must
# be set before torch or llama_cpp is imported; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The trainers report usage to the Hugging Face Hub from a background thread; mtr runs offline and sends nothing.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# transformers (5.25) kernelizes every model it loads with the Hub's kernels when the `kernels` package (one of
# its own dependencies) is there, and on a GPU it downloads them when training starts: on a machine without the
# Hub, SFT and GRPO then fail at their first step (seen on an H200: docs/performance.md), and with it they run
# code that no version pin of mtr's covers. mtr runs offline and pinned; `USE_HUB_KERNELS=YES` turns them on.
os.environ.setdefault("USE_HUB_KERNELS", "NO")
# bm25s (the retriever) runs a JAX operation when it is imported, wherever JAX is installed, and a GPU-enabled
# JAX then takes 75 % of the GPU's memory for itself: on an H200 a 1.7B policy's SFT ran out of memory beside it
# (docs/performance.md). mtr uses no JAX, so JAX allocates only what it uses (set before bm25s or JAX is
# imported, as importing mtr first does).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

__version__ = "0.1.0"
