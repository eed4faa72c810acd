"""Run by torchrun from tests/test_multiprocess.py: one rank of SFT or GRPO on CPU processes (gloo), with
a tiny policy and, for GRPO, the scripted ToolMaker and ToolActor. Each rank writes what it saw to
`out/rank-N.json` for the test to compare."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scripted import Pool, ScriptedBackend  # noqa: E402

from mtr.backends import BackendError  # noqa: E402
from mtr.config import Config  # noqa: E402
from mtr.stages.grpo import train_grpo  # noqa: E402
from mtr.stages.sft import train_sft  # noqa: E402


def main(stage: str, init: str, data: str, out: str, lora: bool) -> None:
    cfg = Config()
    cfg.roles.policy.model = init
    rank = int(os.environ["RANK"])
    # "grpo-down": the ToolMaker's server refuses every connection
    backend = ScriptedBackend(toolmaker=(lambda msgs: BackendError("connection refused")) if stage == "grpo-down"
                              else None)
    adapter = {"r": 16, "lora_alpha": 32} if lora else None
    if stage == "sft":
        cfg.sft.trl = {"max_steps": 2, "per_device_train_batch_size": 1, "save_steps": 1, "report_to": []}
        cfg.sft.lora = adapter
        stats = train_sft(cfg, Path(data), Path(out), overwrite=True)
    else:
        g = cfg.grpo
        g.trl = {"num_generations": 2, "per_device_train_batch_size": 2, "max_steps": 2, "save_steps": 1,
                 "max_completion_length": 32, "report_to": []}
        g.call_budget = 0  # below the call limit of 1
        g.max_turn_tokens, g.max_tool_calls, g.lora = 8, 1, adapter
        stats = train_grpo(cfg, Path(data), Path(init), Path(out), pool=Pool(backend), overwrite=True)
    Path(out, f"rank-{rank}.json").write_text(json.dumps({"stats": stats, "calls": backend.calls}, default=str))


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "lora")
    except Exception as e:
        # written before the launcher stops the other rank, so that the test sees what each rank raised
        Path(sys.argv[4]).mkdir(parents=True, exist_ok=True)
        Path(sys.argv[4], f"rank-{os.environ['RANK']}.err").write_text(f"{type(e).__name__}: {e}")
        raise
