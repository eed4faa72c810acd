"""A llama.cpp (llama-cpp-python) build that runs on the CPU it meets, and a check that it does.

llama-cpp-python ships as source only, and by default llama.cpp compiles with `-march=native`: a build
made on an AVX-512/AMX machine dies with SIGILL on an AVX2 laptop, and even on its own machine when the
CPU advertises AMX that the (virtual) machine does not grant (seen: `tileloadd` in ggml's AMX matmul).
pip also caches the wheel it built and installs it on the next machine that shares the home directory.

So mtr builds the wheel itself, once per *variant*, and keeps it under `$MTR_HOME/wheels/`:

- `portable` (the default on x86-64 CPUs with AVX2, FMA, F16C and BMI2, i.e. x86-64-v3, every x86 CPU
  since 2013-2015): `GGML_NATIVE=OFF`, which compiles SSE4.2, AVX, AVX2, BMI2, FMA and F16C and nothing
  newer (no AVX-512, no AMX);
- `baseline`: SSE4.2 only, for the older CPUs that lack the above;
- `native`: `-march=native` for those who want this CPU's full speed; its wheel is cached under a key of
  this CPU's model and flags, so it is never installed on another CPU.

pip's own wheel cache is bypassed (`--no-cache-dir`), so no wheel reaches a CPU it was not meant for.
After installing, `check` decodes a prompt of several hundred tokens in a child process: a build that
dies is reported in one line, and `install` then falls back to the next safer variant by itself.

    python -m mtr.llamacpp_build install [--variant auto|portable|baseline|native]
    python -m mtr.llamacpp_build check
    python -m mtr.llamacpp_build info

Hand-written because neither pip nor llama-cpp-python chooses build flags by CPU, and llama.cpp's own
runtime choice (`GGML_BACKEND_DL` + `GGML_CPU_ALL_VARIANTS`) scores variants by what CPUID advertises, which
is exactly what misled the AMX build above. Only the standard library and `mtr.embedded` are imported, so
this runs before llama-cpp-python (or anything heavy) is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_VERSION = "0.3.36"
MARKER = Path(sys.prefix) / "mtr-llamacpp.json"  # what mtr installed into this environment
INSTALL_HINT = "python -m mtr.llamacpp_build install"

# ggml's names for the instruction sets it was compiled with (llama_print_system_info) -> /proc/cpuinfo flags
GGML_TO_CPU_FLAG = {
    "SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX_VNNI": "avx_vnni", "AVX2": "avx2", "F16C": "f16c",
    "FMA": "fma", "BMI2": "bmi2", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi", "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8",
}
X86_64_V3 = ("avx", "avx2", "fma", "f16c", "bmi2")


@dataclass(frozen=True)
class Variant:
    name: str
    cmake_args: tuple[str, ...]
    needs: tuple[str, ...]  # /proc/cpuinfo flags the build's code uses (x86-64)
    per_cpu: bool = False    # the wheel is only valid on the CPU that built it
    description: str = ""


VARIANTS = {
    "native": Variant("native", ("-DGGML_NATIVE=ON",), (), per_cpu=True,
                      description="-march=native: every instruction this CPU advertises"),
    "portable": Variant("portable", ("-DGGML_NATIVE=OFF",), X86_64_V3 + ("sse4_2",),
                        description="x86-64-v3: SSE4.2, AVX, AVX2, BMI2, FMA, F16C; no AVX-512, no AMX"),
    "baseline": Variant("baseline", ("-DGGML_NATIVE=OFF", "-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_BMI2=OFF",
                                     "-DGGML_FMA=OFF", "-DGGML_F16C=OFF"), ("sse4_2",),
                        description="SSE4.2 only, for CPUs without AVX2"),
}
# the safer variant to try when a build dies in the check
FALLBACK = {"native": "portable", "portable": "baseline"}


class BuildError(RuntimeError):
    """A build, an install or the check failed; the message is one line saying what to do."""


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def cpu_info() -> tuple[str, set[str]]:
    """(model name, flags) of this CPU from /proc/cpuinfo; ("", empty set) where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def choose_variant(requested: str, flags: set[str], x86: bool | None = None) -> Variant:
    """`auto`: portable where the CPU runs it (and on every non-x86 CPU, where GGML_NATIVE=OFF is the
    architecture's generic build), else baseline."""
    x86 = is_x86() if x86 is None else x86
    if requested != "auto":
        if requested not in VARIANTS:
            raise BuildError(f"unknown llama.cpp build variant {requested!r}; variants: auto, {', '.join(VARIANTS)}")
        return VARIANTS[requested]
    if not x86 or all(f in flags for f in VARIANTS["portable"].needs):
        return VARIANTS["portable"]
    return VARIANTS["baseline"]


def cmake_args(variant: Variant, user_args: str = "") -> str:
    """The variant's flags, then the user's own CMAKE_ARGS (e.g. -DGGML_CUDA=on), which win where they clash."""
    return " ".join([*variant.cmake_args, *user_args.split()]).strip()


def cache_key(variant: Variant, version: str, user_args: str, cpu: tuple[str, set[str]]) -> str:
    """The wheel cache's folder name. A native wheel is keyed by this CPU's model and flags, so a home
    directory shared between machines never hands it to another CPU."""
    parts = [f"llama-cpp-python-{version}", variant.name, platform.machine().lower(),
             f"py{sys.version_info.major}{sys.version_info.minor}"]
    if variant.per_cpu:
        model, flags = cpu
        parts.append("cpu-" + hashlib.sha256((model + "|" + " ".join(sorted(flags))).encode()).hexdigest()[:12])
    if user_args.strip():
        parts.append("args-" + hashlib.sha256(user_args.strip().encode()).hexdigest()[:8])
    return "-".join(parts)


def wheel_cache() -> Path:
    from mtr.embedded import mtr_home

    return mtr_home() / "wheels"


def _pip(*args: str, env: dict | None = None, quiet: bool = True) -> None:
    cmd = [sys.executable, "-m", "pip", *args] + (["-q"] if quiet else [])
    r = subprocess.run(cmd, env=env, capture_output=quiet, text=True)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout or "").strip().splitlines()[-1:] if quiet else []
        raise BuildError(f"`pip {' '.join(args[:2])} ...` failed (exit {r.returncode})"
                         + (f": {tail[0][:300]}" if tail else ""))


def build_wheel(variant: Variant, version: str = LLAMA_CPP_VERSION, rebuild: bool = False) -> Path:
    """The variant's wheel: from mtr's cache, or compiled now (several minutes) and put there."""
    user_args = os.environ.get("CMAKE_ARGS", "")
    folder = wheel_cache() / cache_key(variant, version, user_args, cpu_info())
    found = sorted(folder.glob("llama_cpp_python-*.whl")) if folder.is_dir() else []
    if found and not rebuild:
        return found[-1]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    env = {**os.environ, "CMAKE_ARGS": cmake_args(variant, user_args)}
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    print(f">> compiling llama-cpp-python {version}, variant {variant.name} ({variant.description}); "
          f"CMAKE_ARGS={env['CMAKE_ARGS']!r} (several minutes, once: cached in {folder})", flush=True)
    t0 = time.perf_counter()
    try:
        # --no-cache-dir: pip's wheel cache knows nothing of the flags a wheel was built with
        _pip("wheel", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python", "-w", str(tmp),
             f"llama-cpp-python=={version}", env=env)
        wheels = sorted(tmp.glob("llama_cpp_python-*.whl"))
        if not wheels:
            raise BuildError(f"pip built no llama-cpp-python wheel in {tmp}")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        target = folder / wheels[-1].name
        os.replace(wheels[-1], target)  # the cache holds only whole wheels
        (folder / "build.json").write_text(json.dumps(
            {"variant": variant.name, "cmake_args": env["CMAKE_ARGS"], "version": version, "cpu": cpu_info()[0],
             "built_s": round(time.perf_counter() - t0, 1),
             "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f">> built in {time.perf_counter() - t0:.0f}s: {target.name}", flush=True)
    return target


def install_wheel(wheel: Path, variant: Variant) -> None:
    # --force-reinstall --no-deps replaces another variant of the same version; the second call brings the
    # server extra's dependencies (the tests and `python -m llama_cpp.server` use them)
    _pip("install", "--force-reinstall", "--no-deps", "--no-cache-dir", str(wheel))
    _pip("install", f"{wheel}[server]")
    MARKER.write_text(json.dumps({"variant": variant.name, "description": variant.description,
                                  "cmake_args": cmake_args(variant, os.environ.get("CMAKE_ARGS", "")),
                                  "wheel": str(wheel), "cpu": cpu_info()[0]}, indent=2))


# ---------------------------------------------------------------------------------------------------
# The check: decode a long prompt in a child process, so that an illegal instruction kills the child only.

PROBE = r"""
import json, sys, time
import llama_cpp
from llama_cpp import Llama
info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
llm = Llama(model_path=sys.argv[1], n_ctx=1024, n_batch=512, n_threads=int(sys.argv[2]), verbose=False)
text = " ".join(f"Fact {i}: the river number {i} flows into the lake number {i + 1}." for i in range(40))
tokens = llm.tokenize(text.encode())[: int(sys.argv[3])]
t0 = time.perf_counter()
llm.eval(tokens)  # prompt reading: the batched matrix products where the AMX build died
t1 = time.perf_counter()
out = []
for _ in range(int(sys.argv[4])):
    tok = llm.sample(temp=0.0)
    out.append(tok)
    llm.eval([tok])
t2 = time.perf_counter()
print(json.dumps({"system_info": info, "prompt_tokens": len(tokens), "prompt_s": t1 - t0,
                  "decoded_tokens": len(out), "decode_s": t2 - t1}))
"""


@dataclass
class CheckResult:
    ok: bool
    message: str  # one line
    detail: dict


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def check(gguf: Path | None = None, prompt_tokens: int = 400, threads: int = 2, timeout_s: float = 300,
          probe: str = PROBE, decode_tokens: int = 16, env: dict | None = None) -> CheckResult:
    """Read a `prompt_tokens`-token prompt and decode `decode_tokens` through the installed llama.cpp (or the
    one on `env`'s PYTHONPATH) in a child process."""
    if gguf is None:
        from mtr.embedded import gguf_path

        gguf = gguf_path()
    cmd = [sys.executable, "-c", probe, str(gguf), str(threads), str(prompt_tokens), str(decode_tokens)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"llama.cpp self-check: no answer within {timeout_s:g}s decoding "
                                  f"{prompt_tokens} prompt tokens", {})
    fix = f"rebuild for any x86-64 CPU: {INSTALL_HINT} --variant portable (or `make install`)"
    if r.returncode < 0:
        name = _signal_name(r.returncode)
        what = {"SIGILL": "an illegal instruction: this llama.cpp build uses instructions this CPU cannot run",
                "SIGSEGV": "a segmentation fault", "SIGBUS": "a bus error"}.get(name, "a signal")
        return CheckResult(False, f"llama.cpp self-check: the child died of {name} ({what}) decoding "
                                  f"{prompt_tokens} prompt tokens; {fix}", {"signal": name})
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        return CheckResult(False, f"llama.cpp self-check: exit status {r.returncode}: {last}", {})
    try:
        detail = json.loads(r.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return CheckResult(False, f"llama.cpp self-check: unreadable output {r.stdout[-200:]!r}", {})
    detail["features"] = build_features(detail.get("system_info", ""))
    msg = (f"llama.cpp self-check: ok ({detail['prompt_tokens']} prompt tokens at "
           f"{detail['prompt_tokens'] / max(detail['prompt_s'], 1e-9):.0f} tokens/s, {detail['decoded_tokens']} "
           f"decoded at {detail['decoded_tokens'] / max(detail['decode_s'], 1e-9):.0f} tokens/s; build uses "
           f"{' '.join(detail['features']) or 'no SIMD extensions'})")
    return CheckResult(True, msg, detail)


def build_features(system_info: str) -> list[str]:
    """The instruction sets a build was compiled with, from `llama_print_system_info()`:
    'CPU : SSE3 = 1 | AVX = 1 | ... | OPENMP = 1 |' -> ['SSE3', 'AVX', ...] (instruction sets only)."""
    feats = []
    for part in system_info.replace("\n", "|").split("|"):
        name, eq, value = part.rpartition("=")
        name = name.split(":")[-1].strip()
        if eq and value.strip() == "1" and name in GGML_TO_CPU_FLAG and name not in feats:
            feats.append(name)
    return feats


def missing_on_this_cpu(features: list[str], flags: set[str]) -> list[str]:
    """Instruction sets the build uses that this CPU does not advertise (x86-64 only; [] elsewhere)."""
    if not flags:
        return []
    return [f for f in features if f in GGML_TO_CPU_FLAG and GGML_TO_CPU_FLAG[f] not in flags]


def installed_build() -> dict:
    """What the llama.cpp in this environment is: version, mtr's variant (if mtr installed it), the
    instruction sets it uses, and those this CPU advertises beyond them. Loads the library, runs nothing."""
    from importlib import metadata

    try:
        version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return {"installed": False}
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    features = build_features(info)
    _, flags = cpu_info()
    marker = {}
    if MARKER.is_file():
        try:
            marker = json.loads(MARKER.read_text())
        except json.JSONDecodeError:
            marker = {}
    unused = sorted(g for g, f in GGML_TO_CPU_FLAG.items() if f in flags and g not in features)
    return {"installed": True, "version": version, "variant": marker.get("variant", "unknown (not built by mtr)"),
            "features": features, "missing_on_cpu": missing_on_this_cpu(features, flags), "cpu_unused": unused}


def describe_build() -> str:
    """One line for `mtr models`."""
    b = installed_build()
    if not b["installed"]:
        return f"llama.cpp: not installed ({INSTALL_HINT})"
    line = f"llama.cpp {b['version']}, build {b['variant']}: {' '.join(b['features']) or 'no SIMD extensions'}"
    if b["missing_on_cpu"]:
        line += f"; NOT on this CPU: {' '.join(b['missing_on_cpu'])} (rebuild: {INSTALL_HINT})"
    elif b["cpu_unused"]:
        line += f" (this CPU also has {' '.join(b['cpu_unused'])}: `make install LLAMA_CPU=native` uses them)"
    return line


def install(requested: str = "auto", version: str = LLAMA_CPP_VERSION, fallback: bool = True,
            rebuild: bool = False, run_check: bool = True) -> CheckResult | None:
    """Build (or take from the cache) and install the variant, check it, and fall back to a safer variant
    while the check fails."""
    cpu = cpu_info()
    variant = choose_variant(requested, cpu[1])
    missing = [f for f in variant.needs if is_x86() and cpu[1] and f not in cpu[1]]
    if missing:
        raise BuildError(f"llama.cpp variant {variant.name} needs {' '.join(missing)}, which this CPU lacks; "
                         f"use --variant {'baseline' if variant.name == 'portable' else 'auto'}")
    while True:
        install_wheel(build_wheel(variant, version, rebuild=rebuild), variant)
        if not run_check:
            return None
        result = check()
        print(result.message, flush=True)
        if result.ok:
            return result
        nxt = FALLBACK.get(variant.name)
        if not fallback or nxt is None:
            raise BuildError(result.message)
        print(f">> variant {variant.name} failed its check; falling back to {nxt}", flush=True)
        variant = VARIANTS[nxt]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mtr.llamacpp_build", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install", help="build (once, cached) and install llama-cpp-python, then check it")
    i.add_argument("--variant", default=os.environ.get("MTR_LLAMA_CPU", "auto"),
                   help="auto (default), portable, baseline or native")
    i.add_argument("--version", default=LLAMA_CPP_VERSION)
    i.add_argument("--no-fallback", action="store_true", help="fail instead of trying a safer variant")
    i.add_argument("--rebuild", action="store_true", help="compile again even if the wheel is cached")
    c = sub.add_parser("check", help="decode a long prompt through the installed llama.cpp in a child process")
    c.add_argument("--prompt-tokens", type=int, default=400)
    sub.add_parser("info", help="which instruction sets the installed build uses")
    args = p.parse_args(argv)
    try:
        if args.cmd == "install":
            install(args.variant, args.version, fallback=not args.no_fallback, rebuild=args.rebuild)
        elif args.cmd == "check":
            result = check(prompt_tokens=args.prompt_tokens)
            print(result.message)
            return 0 if result.ok else 2
        else:
            print(describe_build())
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
