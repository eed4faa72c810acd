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

__version__ = "0.1.0"
