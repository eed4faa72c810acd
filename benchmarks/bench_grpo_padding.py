"""What skipping a group's padding saves a GRPO update: TRL's padded passes against UnpaddedGRPOTrainer's.

    .venv/bin/python benchmarks/bench_grpo_padding.py --run runs/bench-learning/quick/grpo-sft+grpo-s0 [--groups 4]

For the first `--groups` generation batches of a finished GRPO run (their episodes' lengths, from its
train_stats.json; the prompt's length from its first sample), both ways time what a step's update does with
a batch: the reference pass (no gradient) over the batch, then each episode's loss forward and backward
(gradient checkpointing as the run had it), on the run's initial checkpoint with TRL's fused LM head. The
token ids are random (the time does not depend on them); the lengths are the run's. Prints the figures and
writes them to benchmarks/results/grpo_padding.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results" / "grpo_padding.json"


def prompt_tokens(run: Path, tok: Any) -> int:
    """The length of the run's first sampled episode's prompt (system, tools, question) as the policy saw it."""
    from mtr.chat_template import render
    from mtr.trace import Trace

    first = json.loads((run / "samples.jsonl").read_text().splitlines()[0])["trace"]
    trace = Trace.model_validate(first)
    messages = [{"role": "system", "content": trace.system}, {"role": "user", "content": trace.question}]
    text = render(tok, messages, trace.policy_tools() or None, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def batch(lengths: list[int], prompt: int, vocab: int, pad: int) -> tuple[Any, Any, int]:
    """Random ids shaped as TRL pads a generation batch: the group's one prompt, then each episode's
    completion, padded on the right."""
    import torch

    keep = max(lengths) - prompt
    ids = torch.full((len(lengths), prompt + keep), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    ids[:, :prompt] = torch.randint(0, vocab, (prompt,))
    for i, n in enumerate(lengths):
        ids[i, prompt:n] = torch.randint(0, vocab, (n - prompt,))
        mask[i, :n] = 1
    return ids, mask, keep


def update(score: Any, ids: Any, mask: Any, keep: int, model: Any) -> float:
    """One batch's update passes: the reference pass over the batch, then each episode's loss and backward."""
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        score(ids, mask, keep, 1, False)
    for i in range(ids.size(0)):
        logps, _ = score(ids[i:i + 1], mask[i:i + 1], keep, 1, True)
        (-(logps * mask[i:i + 1, -keep:]).sum()).backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def scorers(init: Path, checkpointing: bool) -> tuple[Any, Any, Any]:
    """The run's initial model as GRPO trains it (fp32, TRL's fused LM head, checkpointing as asked), and its
    two ways to score a batch: TRL's padded pass and mtr's unpadded one."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    from mtr.grpo_trainer import score_unpadded

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    trainer_like = type("TrainerLike", (), {"accelerator": Accelerator(cpu=True)})()
    stock = GRPOTrainer._get_per_token_logps_and_entropies

    def padded(ids, mask, keep, batch_size, entropy):
        logps, ent, _ = stock(trainer_like, model, ids, mask, keep, batch_size=batch_size, compute_entropy=entropy)
        return logps, ent

    def unpadded(ids, mask, keep, batch_size, entropy):
        def score(i, m, k, compute_entropy):
            return stock(trainer_like, model, i, m, k, batch_size=i.size(0), compute_entropy=compute_entropy)
        return score_unpadded(score, ids, mask, keep, batch_size, entropy)

    return model, padded, unpadded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished GRPO run directory (mtr grpo's --out)")
    ap.add_argument("--groups", type=int, default=4, help="generation batches to time, from the run's first")
    args = ap.parse_args()

    import torch

    from bench_learning import cpu_name
    from mtr.checkpoints import load_tokenizer
    from mtr.stages.grpo import padding_pct

    stats_file = args.run / "train_stats.json"
    if not stats_file.is_file() or "episode_tokens" not in json.loads(stats_file.read_text()):
        raise SystemExit(f"--run {args.run}: no train_stats.json with episode lengths (a GRPO run of this version)")
    stats = json.loads(stats_file.read_text())
    manifest = json.loads((args.run / "manifest.json").read_text())
    init = Path(manifest["init"])
    checkpointing = bool(manifest["config"]["grpo"]["trl"].get("gradient_checkpointing"))
    groups = stats["episode_tokens"][: args.groups]
    tok = load_tokenizer(init)
    prompt = prompt_tokens(args.run, tok)
    model, padded, unpadded = scorers(init, checkpointing)

    rows = []
    for n, lengths in enumerate(groups):
        lengths = [max(n_tokens, prompt + 1) for n_tokens in lengths]
        ids, mask, keep = batch(lengths, prompt, model.config.vocab_size, tok.pad_token_id)
        t_padded = update(padded, ids, mask, keep, model)
        t_unpadded = update(unpadded, ids, mask, keep, model)
        rows.append({"lengths": lengths, "padding_pct": padding_pct([lengths]), "padded_s": round(t_padded, 2),
                     "unpadded_s": round(t_unpadded, 2)})
        print(f"batch {n + 1}: episodes {lengths} tokens ({rows[-1]['padding_pct']} % padding when padded): "
              f"padded {t_padded:.1f} s, unpadded {t_unpadded:.1f} s", flush=True)
    total_p, total_u = sum(r["padded_s"] for r in rows), sum(r["unpadded_s"] for r in rows)
    run = args.run.resolve()
    result = {"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
              "init": str(init), "prompt_tokens": prompt, "gradient_checkpointing": checkpointing,
              "batches": rows, "padding_pct": padding_pct([r["lengths"] for r in rows]),
              "padded_s": round(total_p, 1), "unpadded_s": round(total_u, 1),
              "saved_pct": round(100 * (1 - total_u / total_p), 1), "run_padding_pct": stats.get("padding_pct"),
              "date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(),
              "threads": torch.get_num_threads(), "torch": torch.__version__}
    print(f"update passes over {len(rows)} batches: padded {total_p:.1f} s, unpadded {total_u:.1f} s "
          f"({result['saved_pct']} % less); the run's batches held {result['run_padding_pct']} % padding")
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
