"""mtr: teach language models to use tools without live APIs (models as tools, SFT then GRPO)."""

import os

# torch and llama.cpp each keep an OpenMP thread pool in one mtr process (the policy on transformers, the
# ToolMaker and ToolActor on llama.cpp), and on a small machine other jobs share the cores. OpenMP's default
# busy-waiting then burns the cycles the other pool needs: synthesis ran 2.6x slower with spinning threads,
# and beside another PyTorch job transformers generated 3x and llama.cpp read prompts 4.5x faster when
# waiting passively (docs/performance.md). The price, when mtr has the cores to itself: 18-35% of
# transformers' generation rate (nothing on llama.cpp); `OMP_WAIT_POLICY=` (empty) takes it back. It must
# be set before torch or llama_cpp is imported; a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The trainers report usage to the Hugging Face Hub from a background thread; mtr runs offline and sends nothing.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
