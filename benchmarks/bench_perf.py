"""Throughput benchmarks, each comparison measured in the same run (this machine is shared and noisy).

    .venv/bin/python benchmarks/bench_perf.py [--parts omp,limit,synth] [--n 4] [--repeats 3]
    make bench

Parts:
  omp    the OpenMP wait policy: the same workloads with threads spinning (libgomp's default, and ACTIVE)
         and waiting passively (what mtr sets); each workload in a fresh process, variants alternated.
  limit  the hardware's best generation rate for the embedded model: transformers `generate` at batch
         1/4/8/16 and llama.cpp, greedy, 64 new tokens after a ~200-token prompt.
  synth  synthesis throughput, mtr's orchestrator (episodes concurrent, requests batched) versus the
         naive loop (one question at a time, one request at a time) on the same questions and backend.
  thread transformers `generate` called on the main thread and through `asyncio.to_thread` (how mtr's local
         backends and GRPO sampler call it), alternated in one process.
  rollout GRPO's multi-turn rollout (no update) versus `model.generate` one episode at a time, before and
         after lockstep batching, and with a LoRA adapter unmerged or merged (`--init SFT_CHECKPOINT`).

Every figure is the median over --repeats runs; ratios are of medians measured in the same invocation.
Writes benchmarks/results/perf.json (merged with parts measured earlier).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "perf.json"
PY = sys.executable


# ------------------------------------------------------------------ workers (run in a fresh process)


def worker_synth(n: int, preset: str, backend: str | None, concurrency: int, teacher: str | None,
                 n_slots: int | None = None, prefix_cache_mb: int | None = None, dtype: str | None = None,
                 grammar_first: bool = False, separate_roles: bool = False) -> dict:
    import asyncio

    from mtr.config import load_config
    from mtr.data import resolve_benchmark
    from mtr.stages.synth import synthesize

    cfg = load_config(ROOT / "src" / "mtr" / "configs" / preset)
    if backend:
        for role in ("toolmaker", "autoagent", "toolactor"):
            setattr(cfg.roles, role, cfg.role(role).model_copy(update={"backend": backend}))
    for field, value in (("n_slots", n_slots), ("prefix_cache_mb", prefix_cache_mb), ("dtype", dtype)):
        if value is not None:
            for role in ("toolmaker", "autoagent", "toolactor"):
                setattr(cfg.roles, role, cfg.role(role).model_copy(update={field: value}))
    if teacher:
        cfg.synth.teacher = teacher
    cfg.synth.concurrency = concurrency
    if grammar_first:  # the order before mtr.backends.llamacpp_grammar, for a before/after figure
        from llama_cpp import Llama

        from mtr.backends.llamacpp_grammar import GrammarAfterLlama

        GrammarAfterLlama._init_sampler = Llama._init_sampler
    if separate_roles:  # the batching before mixed rows, for a before/after figure
        from mtr.backends import HFBackend

        HFBackend.mixed_rows = False
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        stats = asyncio.run(synthesize(cfg, resolve_benchmark("hotpotqa"), Path(d), limit=n))
        wall = time.perf_counter() - t
    return {"wall_s": wall, "episodes": stats["episodes"], "episodes_per_s": stats["episodes"] / wall,
            "generated_tokens": stats["generated_tokens"], "tokens_per_s": stats["generated_tokens"] / wall,
            "batches": stats.get("batches", {})}


PROMPT = ("You answer questions by calling tools. Questions often need two or more facts: look up the first, "
          "read the result, then look up the next. ") * 6 + "Question: who wrote the novel Dracula, and when?"


def _embedded_hf(batch: int, dtype: str = "float32") -> tuple[Any, Any, dict]:
    """The embedded model on transformers (float32, or int8 as `dtype: int8` makes it), its tokenizer, and
    PROMPT `batch` times."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtr.backends import quantize_int8
    from mtr.embedded import ensure_checkpoint

    path = ensure_checkpoint()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    if dtype == "int8":
        model = quantize_int8(model)
    return tok, model, tok([PROMPT] * batch, return_tensors="pt")


def worker_hf_generate(batch: int, new_tokens: int = 64) -> dict:
    import torch

    tok, model, enc = _embedded_hf(batch)  # the same prompt on every row: no padding
    with torch.no_grad():
        model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)  # warm-up
        t = time.perf_counter()
        out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tok.eos_token_id)
        wall = time.perf_counter() - t
    generated = (out.shape[1] - enc["input_ids"].shape[1]) * batch
    return {"wall_s": wall, "prompt_tokens": int(enc["input_ids"].shape[1]), "generated_tokens": generated,
            "tokens_per_s": generated / wall}


def worker_hf_thread(batch: int, dtype: str, new_tokens: int = 30, repeats: int = 8) -> dict:
    import asyncio

    import torch

    tok, model, enc = _embedded_hf(batch, dtype)

    def generate() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tok.eos_token_id)
        return time.perf_counter() - t

    async def alternate() -> dict[str, list[float]]:
        walls: dict[str, list[float]] = {"main thread": [], "asyncio.to_thread": []}
        generate()  # warm-up
        await asyncio.to_thread(generate)  # ... and the executor's thread exists
        for _ in range(repeats):
            walls["main thread"].append(generate())
            walls["asyncio.to_thread"].append(await asyncio.to_thread(generate))
        return walls

    walls = asyncio.run(alternate())
    out = {k: batch * new_tokens / statistics.median(v) for k, v in walls.items()}
    return {"tokens_per_s": out, "walls": walls, "prompt_tokens": int(enc["input_ids"].shape[1]),
            "ratio": out["asyncio.to_thread"] / out["main thread"]}


def worker_llamacpp_generate(new_tokens: int = 64) -> dict:
    from llama_cpp import Llama

    from mtr.embedded import gguf_path

    llm = Llama(model_path=str(gguf_path()), n_ctx=2048, n_batch=512, seed=0, verbose=False)
    toks = llm.tokenize(PROMPT.encode())
    llm.create_completion(prompt=PROMPT, max_tokens=4, temperature=0)  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(toks)
    prefill = time.perf_counter() - t
    for _ in range(3):  # another job can stall the short run more than the long one: measure again
        walls, counts = [], []
        for max_tokens in (1, new_tokens):  # decoding = the difference, so that prompt reading cancels out
            llm.reset()
            t = time.perf_counter()
            out = llm.create_completion(prompt=PROMPT, max_tokens=max_tokens, temperature=0)
            walls.append(time.perf_counter() - t)
            counts.append(out["usage"]["completion_tokens"])
        decode = walls[1] - walls[0]
        if decode > 0:
            break
    else:
        raise SystemExit("llama.cpp decode time was not positive in 3 tries; the machine is too busy to measure")
    return {"wall_s": walls[1], "prompt_tokens": len(toks), "prefill_tokens_per_s": len(toks) / prefill,
            "generated_tokens": counts[1], "tokens_per_s": (counts[1] - counts[0]) / decode}


def worker_rollout(variant: str, init: str | None, questions: int, group: int, seed: int = 0) -> dict:
    """GRPO's multi-turn rollout at the CPU preset (grpo-cpu.yaml: ToolActor on llama.cpp, grounded, one call
    then the answer), without the update: `questions` x `group` episodes, the policy sampled by
    - naive:      one episode at a time, `model.generate` on one sequence (what a hand-written loop does);
    - batched:    all episodes concurrent, a turn's batch cut once the pending requests stop arriving
                  (mtr's rollout before lockstep: turns after a tool call trickle in one or two at a time);
    - lockstep:   all episodes concurrent, one batch per turn holding every live episode (mtr's rollout
                  before the prefix cache: every turn re-reads the episode's whole history);
    - cached:     lockstep, each turn reading only what the prefix cache does not hold (mtr's rollout);
    - lora-unmerged / lora-merged: lockstep with a LoRA adapter on the policy, as `grpo.lora` trains it,
                  sampled through the adapter (what mtr did) or with it merged into the weights (tried:
                  no faster end to end here, docs/performance.md);
    - lora-cached: lora-unmerged with the prefix cache (what mtr does with `grpo.lora`);
    - cached-concatenated: cached, the batch's keys and values grown by concatenation and each row's new
                  tokens padded in the batch (`kvcache.BUFFERED` and `READ_ROWS_ALONE` off: mtr's rollout
                  before commit 221ee45);
    - cached-weight-major: cached, a few rows' linear products as W @ x.T (`kvcache.WEIGHT_MAJOR`: mtr's
                  rollout since 2026-12-06 on a CPU whose BLAS does them faster so). Every other variant
                  keeps torch's own product, as it was measured before.
    """
    import asyncio
    from types import SimpleNamespace

    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from mtr.backends import BackendPool
    from mtr.checkpoints import load_tokenizer
    from mtr.config import load_config
    from mtr.data import load_qa, resolve_benchmark
    from mtr.embedded import ensure_checkpoint
    from mtr.env import Environment
    from mtr.rollout import ModelSampler, RolloutAgent, policy_for_generation

    import mtr.backends.kvcache as kv

    kv.BUFFERED = kv.READ_ROWS_ALONE = variant != "cached-concatenated"
    kv.WEIGHT_MAJOR = variant == "cached-weight-major"
    torch.manual_seed(seed)
    cfg = load_config(ROOT / "src" / "mtr" / "configs" / "grpo-cpu.yaml")
    g, t = cfg.grpo, cfg.grpo.trl
    path = Path(init) if init else ensure_checkpoint()
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if variant.startswith("lora"):
        from peft import get_peft_model

        model = get_peft_model(model, g.peft_config() or g.model_copy(update={"lora": {}}).peft_config())
    model.eval()
    lines = [x for x in resolve_benchmark("hotpotqa").read_text().splitlines()[100:]
             if json.loads(x)["metadata"]["type"] == "comparison"][:questions]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "qa.jsonl").write_text("\n".join(lines) + "\n")
        examples = load_qa(Path(d) / "qa.jsonl")
    pool = BackendPool(cfg)
    env = Environment.from_config(cfg, "grpo", pool)
    env.store.on_failure = "utilities"
    for ex in examples:  # the utility tools only: the ToolMaker is not what this measures
        env.store.made[ex.id] = env.store.made.get(ex.id) or _utilities_only(env, ex)
    batch = [ex for ex in examples for _ in range(group)]
    timing: dict[str, float] = {}

    def agent_for(batch_size: int, lockstep: bool) -> RolloutAgent:
        # near-greedy, so that every variant writes the same turns and so does the same work (sampled turns
        # differ in length from run to run, and one run's longer episodes read as a slower variant)
        sampler = ModelSampler(model, tok, 1e-3, batch_size, timing, episodes=len(batch) if lockstep else None,
                               prefix_cache=variant in ("cached", "lora-cached", "cached-concatenated",
                                                                 "cached-weight-major"))
        return RolloutAgent(sampler, tok, g.max_turn_tokens, t["max_completion_length"])

    async def rollout() -> list:
        seeds = [seed + i for i in range(len(batch))]
        if variant == "naive":
            agent = agent_for(1, lockstep=False)
            return [await env.rollout(ex, agent, f"{ex.id}#{i}", seeds[i]) for i, ex in enumerate(batch)]
        return await env.rollout_group(batch, agent_for(len(batch), lockstep=variant != "batched"), seeds)

    trainer = SimpleNamespace(model_wrapped=model, accelerator=Accelerator(cpu=True),
                              args=SimpleNamespace(ds3_gather_for_generation=True))
    t0 = time.perf_counter()  # not `t`: agent_for reads the TRL settings by that name when the rollout runs
    with policy_for_generation(trainer) as policy:
        if variant == "lora-merged":
            policy.base_model.merge_adapter()
        traces = asyncio.run(rollout())
    wall = time.perf_counter() - t0
    asyncio.run(pool.aclose())
    gen = timing["generated_tokens"]
    return {"wall_s": wall, "episodes": len(traces), "generated_tokens": gen, "generate_s": timing["generate_s"],
            "tokens_per_s": gen / wall, "generate_tokens_per_s": gen / timing["generate_s"],
            "episodes_per_s": len(traces) / wall, "turns": sum(len(tr.steps) for tr in traces)}


def _utilities_only(env, ex):
    from mtr.toolmaker import QuestionTools

    return QuestionTools(id=ex.id, tools=list(env.store.toolmaker.utilities))


WORKERS = {"synth": worker_synth, "hf_generate": worker_hf_generate, "hf_thread": worker_hf_thread,
           "llamacpp_generate": worker_llamacpp_generate,
           "rollout": worker_rollout}


# ------------------------------------------------------------------ the parent: variants in fresh processes


def cpu() -> str:
    """The CPU the figures are from. The shared machine is not always the same host: int8 decoding, for one,
    was 2.2x float32 on one earlier host (not recorded) and no faster on an AVX2-only one."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    first = {k.strip(): v.strip() for k, v in
             (line.split(":", 1) for line in info.split("\n\n")[0].splitlines() if ":" in line)}
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f in first.get("flags", "").split()]
    return (f"{first.get('model name', '?')} (family {first.get('cpu family', '?')}, model "
            f"{first.get('model', '?')}; {' '.join(simd)}; {os.cpu_count()} cores)")


def measure(worker: str, kwargs: dict, env: dict[str, str] | None = None) -> dict:
    e = dict(os.environ)
    e.pop("OMP_WAIT_POLICY", None)
    e.update(env or {})
    cmd = [PY, __file__, "--worker", worker, "--kwargs", json.dumps(kwargs)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=ROOT, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"worker {worker} {kwargs} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def compare(name: str, worker: str, kwargs: dict, variants: dict[str, dict], repeats: int, key: str) -> dict:
    """Run each variant `repeats` times, alternating, and report medians and ratios to the first variant."""
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for i in range(repeats):
        for v, env in variants.items():
            runs[v].append(measure(worker, kwargs, env))
            print(f"  {name} [{v}] run {i + 1}: {runs[v][-1][key]:.3f} {key}", flush=True)
    med = {v: median_of(rs, key) for v, rs in runs.items()}
    base = next(iter(variants))
    return {"workload": name, "key": key, "kwargs": kwargs, "median": med,
            "ratio_to_" + base: {v: med[v] / med[base] for v in med}, "runs": runs}


# OMP_WAIT_POLICY="" leaves libgomp at its default (spin for a while, then sleep) and keeps mtr from setting it.
OMP_VARIANTS = {"default": {"OMP_WAIT_POLICY": ""}, "active": {"OMP_WAIT_POLICY": "ACTIVE"},
                "passive (mtr)": {"OMP_WAIT_POLICY": "PASSIVE"}}


OMP_WORKLOADS = {
    "synth": ("synth: demo preset (scripted teacher; ToolMaker, ToolActor on llama.cpp)", "synth",
              lambda a: {"n": a.n, "preset": "demo.yaml", "backend": None, "concurrency": 16, "teacher": None},
              "episodes_per_s"),
    "hf": ("transformers generate, batch 8", "hf_generate", lambda a: {"batch": 8}, "tokens_per_s"),
    "llamacpp": ("llama.cpp generate", "llamacpp_generate", lambda a: {}, "tokens_per_s"),
    "rollout": ("GRPO rollout, lockstep (policy on transformers, ToolActor on llama.cpp, one process)", "rollout",
                lambda a: {"variant": "lockstep", "init": a.init, "questions": 1, "group": 4}, "tokens_per_s"),
}


def omp_variants(spec: str) -> dict[str, dict[str, str]]:
    """`default,passive,spin10000`: libgomp's wait policies; `spinN` spins N iterations, then sleeps."""
    out = {}
    for name in spec.split(","):
        if name.startswith("spin"):
            out[f"spin {name[4:]}"] = {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": name[4:]}
        else:
            out[next(k for k in OMP_VARIANTS if k.startswith(name))] = OMP_VARIANTS[
                next(k for k in OMP_VARIANTS if k.startswith(name))]
    return out


def part_omp(args, save) -> list[dict]:
    done = []
    variants = omp_variants(args.omp_variants)
    for key in args.omp_workloads.split(","):
        name, worker, kwargs, metric = OMP_WORKLOADS[key]
        done.append(compare(name + args.omp_label, worker, kwargs(args), variants, args.repeats, metric))
        save(done)  # each comparison is kept as soon as it is measured
    return done


def part_limit(args, save) -> dict:
    out = {}
    for b in (1, 4, 8, 16):
        runs = [measure("hf_generate", {"batch": b}) for _ in range(args.repeats)]
        out[f"hf batch {b}"] = median_of(runs, "tokens_per_s")
        print(f"  hf batch {b}: {out[f'hf batch {b}']:.1f} tokens/s", flush=True)
    runs = [measure("llamacpp_generate", {}) for _ in range(args.repeats)]
    out["llamacpp"] = median_of(runs, "tokens_per_s")
    out["llamacpp prefill"] = median_of(runs, "prefill_tokens_per_s")
    print(f"  llamacpp: {out['llamacpp']:.1f} tokens/s decode, {out['llamacpp prefill']:.0f} tokens/s prefill")
    out["best generation tokens/s"] = max(v for k, v in out.items() if "prefill" not in k)
    return out


def part_thread(args, save) -> dict:
    out = {}
    for batch, dtype in ((1, "int8"), (1, "float32"), (4, "float32")):
        r = measure("hf_thread", {"batch": batch, "dtype": dtype, "repeats": 2 * args.repeats})
        out[f"{dtype}, batch {batch}"] = r
        print(f"  {dtype}, batch {batch}: " + ", ".join(f"{k} {v:.1f} tokens/s" for k, v in r["tokens_per_s"].items())
              + f" ({r['ratio']:.2f}x)", flush=True)
    return out


def synth_variants(spec: str, backend: str) -> dict[str, dict]:
    """`1/1,16/4,16/1/0,16/1:int8,16/4:grammar-first`: episodes in flight / llama.cpp slots [/ hf prefix cache
    MB] [:option] per variant, where the option is an hf dtype, on hf `separate-roles` (a batch only for
    requests of the same temperature and token budget, as before mixed rows), or on llamacpp
    `grammar-first` (llama-cpp-python's own grammar order instead of mtr's sample-then-check). Slots only matter on llamacpp,
    the cache only on hf; unsaid: the config's default."""
    out = {}
    for item in spec.split(","):
        item, _, option = item.partition(":")
        conc, slots, *rest = (int(x) for x in item.split("/"))
        cache_mb = rest[0] if rest else None
        if backend != "llamacpp":
            slots = 1
        who = "naive (1 at a time)" if conc == 1 else f"mtr ({conc} concurrent)"
        who += f", {slots} slot{'s' * (slots > 1)}" if backend == "llamacpp" else ""
        who += ("" if cache_mb is None or backend != "hf" else
                ", no prefix cache" if cache_mb == 0 else f", prefix cache {cache_mb} MB")
        grammar_first = option == "grammar-first"
        if grammar_first and backend != "llamacpp":
            raise SystemExit(f"synth variant {item}:{option}: grammar-first is a llamacpp option")
        separate = option == "separate-roles"
        if separate and backend != "hf":
            raise SystemExit(f"synth variant {item}:{option}: separate-roles is an hf option")
        dtype = option if option and not (grammar_first or separate) else None
        who += f", {dtype}" if dtype and backend == "hf" else ""
        who += ", grammar first" if grammar_first else ""
        who += ", a batch per role's sampling settings" if separate else ""
        out[who] = {"concurrency": conc, "n_slots": slots, "prefix_cache_mb": cache_mb, "dtype": dtype,
                    "grammar_first": grammar_first, "separate_roles": separate}
    return out


def part_synth(args, save) -> list[dict]:
    res = []
    by_backend = {b: synth_variants(args.synth_variants, b) for b in args.backends.split(",")}  # bad specs fail first
    for backend, variants in by_backend.items():
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for i in range(args.repeats):
            for v, variant in variants.items():
                runs[v].append(measure("synth", {"n": args.n, "preset": args.synth_preset, "backend": backend,
                                                 "teacher": args.teacher, **variant}))
                print(f"  synth {backend} [{v}] run {i + 1}: {runs[v][-1]['episodes_per_s']:.4f} episodes/s",
                      flush=True)
        med = {v: {"episodes_per_s": median_of(rs, "episodes_per_s"), "tokens_per_s": median_of(rs, "tokens_per_s")}
               for v, rs in runs.items()}
        first = next(iter(med))
        preset = "" if args.synth_preset == "cpu-tiny.yaml" else f", {args.synth_preset}, {args.teacher} teacher"
        res.append({"workload": f"{backend}, {args.n} questions{preset}{args.synth_label}", "backend": backend,
                    "n": args.n,
                    "median": med, "runs": runs,
                    "ratio_to_first": {v: m["episodes_per_s"] / med[first]["episodes_per_s"] for v, m in med.items()}})
        save(res)
    return res


def part_rollout(args, save) -> dict:
    variants = args.rollout_variants.split(",")
    kwargs = {"init": args.init, "questions": args.questions, "group": 4}
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for i in range(args.repeats):
        for v in variants:
            runs[v].append(measure("rollout", {**kwargs, "variant": v, "seed": i}))
            r = runs[v][-1]
            print(f"  rollout [{v}] run {i + 1}: {r['tokens_per_s']:.1f} tokens/s of rollout, "
                  f"{r['generate_tokens_per_s']:.1f} while generating, {r['wall_s']:.0f} s", flush=True)
    keys = ("tokens_per_s", "generate_tokens_per_s", "episodes_per_s", "wall_s")
    med = {v: {k: median_of(rs, k) for k in keys} for v, rs in runs.items()}
    res = {"kwargs": kwargs, "median": med, "runs": runs,
           "speedup_vs_first": {v: med[v]["tokens_per_s"] / med[variants[0]]["tokens_per_s"] for v in variants}}
    save(res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--kwargs", default="{}")
    ap.add_argument("--parts", default="omp,limit,synth")
    ap.add_argument("--n", type=int, default=4, help="questions per synthesis run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backends", default="llamacpp,hf", help="synth part: backends of the simulated roles")
    ap.add_argument("--synth-variants", default="1/1,16/1,1/4,4/4,16/4",
                    help="synth part: episodes in flight / llama.cpp slots [/ hf prefix cache MB] [:hf dtype, "
                         "separate-roles or grammar-first], one per variant; the first is the baseline")
    ap.add_argument("--synth-label", default="", help="synth part: appended to each workload's name (e.g. ', "
                    "grammar order'), so that a comparison of other variants is kept beside the earlier one")
    ap.add_argument("--synth-preset", default="cpu-tiny.yaml", help="synth part: the preset (src/mtr/configs)")
    ap.add_argument("--teacher", default="model", choices=["model", "scripted"], help="synth part: the AutoAgent")
    ap.add_argument("--init", default=None, help="rollout part: the policy checkpoint (an SFT output; "
                                                   "default: the embedded model)")
    ap.add_argument("--questions", type=int, default=2, help="rollout part: questions, each a group of 4")
    ap.add_argument("--rollout-variants", default="naive,batched,lockstep,cached,lora-unmerged,lora-cached",
                    help="rollout part: variants, ratios are to the first")
    ap.add_argument("--rollout-key", default="rollout", help="rollout part: where in perf.json the figures go, "
                    "so that a comparison of other variants is kept beside the earlier one")
    ap.add_argument("--omp-variants", default="default,active,passive",
                    help="omp part: default, active, passive, spinN (GOMP_SPINCOUNT=N)")
    ap.add_argument("--omp-label", default="", help="omp part: appended to each workload's name (e.g. "
                    "', cores idle'), so that figures under other conditions are kept beside it")
    ap.add_argument("--omp-workloads", default="synth,hf,llamacpp", help="omp part: " + ",".join(OMP_WORKLOADS))
    args = ap.parse_args()
    if args.worker:
        sys.path.insert(0, str(ROOT / "src"))
        print(json.dumps(WORKERS[args.worker](**json.loads(args.kwargs))))
        return
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for part in args.parts.split(","):
        print(f"== {part}", flush=True)
        t = time.perf_counter()

        key = args.rollout_key if part == "rollout" else part
        earlier = results.get(key, {}).get("value")

        def save(value, part=key, t=t, earlier=earlier):
            if isinstance(value, list) and isinstance(earlier, list):  # keep workloads measured by earlier runs
                names = {v.get("workload", v.get("backend")) for v in value}
                value = [e for e in earlier if e.get("workload", e.get("backend")) not in names] + value
            results[part] = {"value": value, "repeats": args.repeats, "n": args.n, "wall_s": time.perf_counter() - t,
                             "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu()}
            OUT.parent.mkdir(parents=True, exist_ok=True)
            OUT.write_text(json.dumps(results, indent=2))

        parts = {"omp": part_omp, "limit": part_limit, "thread": part_thread, "synth": part_synth,
                 "rollout": part_rollout}
        save(parts[part](args, save))
    print_tables(results)


def print_tables(results: dict) -> None:
    if "omp" in results:
        print("\nOpenMP wait policy (median; ratio to libgomp's default)")
        for c in results["omp"]["value"]:
            ratio = next(v for k, v in c.items() if k.startswith("ratio_to_"))
            cells = ", ".join(f"{v}: {m:.3f} ({ratio[v]:.2f}x)" for v, m in c["median"].items())
            print(f"  {c['workload']} [{c['key']}]: {cells}")
    if "thread" in results:
        print("\ntransformers generate on the main thread and through asyncio.to_thread (median tokens/s)")
        for k, r in results["thread"]["value"].items():
            cells = ", ".join(f"{w}: {v:.1f}" for w, v in r["tokens_per_s"].items())
            print(f"  {k}: {cells} ({r['ratio']:.2f}x)")
    if "limit" in results:
        print("\nthe limit (generation tokens/s, median)")
        for k, v in results["limit"]["value"].items():
            print(f"  {k}: {v:.1f}")
    for key in [k for k in results if k.startswith("rollout")]:
        r = results[key]["value"]
        print(f"\nGRPO rollout, {key} ({r['kwargs']['questions']} questions x group 4; median)")
        for v, m in r["median"].items():
            ratio = r.get("speedup_vs_first", r.get("speedup_vs_naive"))[v]
            print(f"  {v}: {m['tokens_per_s']:.1f} tokens/s of rollout ({ratio:.2f}x the first), "
                  f"{m['generate_tokens_per_s']:.1f} tokens/s while generating, {m['episodes_per_s']:.3f} episodes/s")
    if "synth" in results:
        print("\nsynthesis, mtr vs the naive loop (median)")
        for r in results["synth"]["value"]:
            cells = ", ".join(f"{v}: {m['episodes_per_s']:.4f} ep/s, {m['tokens_per_s']:.1f} tok/s"
                              for v, m in r["median"].items())
            ratios = r.get("ratio_to_first") or {}
            ratio = ", ".join(f"{v}: {x:.2f}x" for v, x in ratios.items()) or \
                f"speed-up {r['speedup_episodes_per_s']:.2f}x"
            print(f"  {r.get('workload', r['backend'] + ' (n=' + str(r['n']) + ')')}: {cells}; "
                  f"episodes/s vs the first: {ratio}")


if __name__ == "__main__":
    main()
