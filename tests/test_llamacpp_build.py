"""The llama.cpp build mtr installs: variant choice, the wheel cache's keys, the child-process check."""

import pytest

import mtr.llamacpp_build as lb
from mtr.backends import BackendError, LlamaCppBackend
from mtr.config import RoleConfig

V3 = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}
SYSTEM_INFO = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
               "AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")


def test_auto_picks_portable_where_the_cpu_runs_it_and_baseline_elsewhere():
    assert lb.choose_variant("auto", V3 | {"avx512f", "amx_int8"}, x86=True).name == "portable"
    assert lb.choose_variant("auto", {"sse4_2", "avx"}, x86=True).name == "baseline"
    assert lb.choose_variant("auto", set(), x86=False).name == "portable"  # generic build of the architecture
    assert lb.choose_variant("native", V3, x86=True).name == "native"
    with pytest.raises(lb.BuildError, match="unknown llama.cpp build variant 'fast'"):
        lb.choose_variant("fast", V3)


def test_portable_flags_leave_out_avx512_and_amx_and_user_args_come_last():
    args = lb.cmake_args(lb.VARIANTS["portable"], "-DGGML_CUDA=on")
    assert args == "-DGGML_NATIVE=OFF -DGGML_CUDA=on"
    assert "AVX512" not in args and "AMX" not in args
    baseline = lb.cmake_args(lb.VARIANTS["baseline"])
    assert "-DGGML_AVX2=OFF" in baseline and "-DGGML_FMA=OFF" in baseline


def test_a_native_wheel_is_keyed_by_the_cpu_a_portable_one_is_not():
    native, portable = lb.VARIANTS["native"], lb.VARIANTS["portable"]
    amd, intel = ("AMD EPYC", V3 | {"avx512f"}), ("Intel Xeon", V3 | {"avx512f", "amx_int8"})
    assert lb.cache_key(native, "0.3.36", "", amd) != lb.cache_key(native, "0.3.36", "", intel)
    assert lb.cache_key(portable, "0.3.36", "", amd) == lb.cache_key(portable, "0.3.36", "", intel)
    assert lb.cache_key(portable, "0.3.36", "-DGGML_CUDA=on", amd) != lb.cache_key(portable, "0.3.36", "", amd)
    assert "native" in lb.cache_key(native, "0.3.36", "", amd) and "0.3.36" in lb.cache_key(native, "0.3.36", "", amd)


def test_build_features_and_what_the_cpu_lacks():
    feats = lb.build_features(SYSTEM_INFO)
    assert feats == ["SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2", "AVX512", "AMX_INT8"]
    assert lb.missing_on_this_cpu(feats, V3 | {"pni", "ssse3"}) == ["AVX512", "AMX_INT8"]
    assert lb.missing_on_this_cpu(feats, set()) == []  # no /proc/cpuinfo: nothing to compare against


def test_a_child_killed_by_an_illegal_instruction_is_one_line_with_the_fix():
    probe = "import os, signal; os.kill(os.getpid(), signal.SIGILL)"
    r = lb.check(gguf=lb.Path("/nonexistent.gguf"), probe=probe)
    assert not r.ok and r.detail["signal"] == "SIGILL"
    assert "\n" not in r.message and "illegal instruction" in r.message and "--variant portable" in r.message


def test_check_reports_exit_status_and_success():
    r = lb.check(gguf=lb.Path("x.gguf"), probe="import sys; sys.exit('cannot load x.gguf')")
    assert not r.ok and "exit status 1: cannot load x.gguf" in r.message
    ok = ('import json; print(json.dumps({"system_info": "CPU : AVX2 = 1 | FMA = 1 |", "prompt_tokens": 400, '
          '"prompt_s": 2.0, "decoded_tokens": 16, "decode_s": 0.5}))')
    r = lb.check(gguf=lb.Path("x.gguf"), probe=ok)
    assert r.ok and r.detail["features"] == ["AVX2", "FMA"] and "200 tokens/s" in r.message and "AVX2 FMA" in r.message


def test_install_falls_back_to_a_safer_variant_while_the_check_fails(monkeypatch):
    installed = []
    monkeypatch.setattr(lb, "cpu_info", lambda: ("Intel Xeon", V3 | {"avx512f", "amx_int8"}))
    monkeypatch.setattr(lb, "build_wheel", lambda variant, version, rebuild=False: f"{variant.name}.whl")
    monkeypatch.setattr(lb, "install_wheel", lambda wheel, variant: installed.append(variant.name))
    monkeypatch.setattr(lb, "check", lambda: lb.CheckResult(installed[-1] != "native", f"{installed[-1]} checked", {}))
    assert lb.install("native").ok and installed == ["native", "portable"]
    installed.clear()
    with pytest.raises(lb.BuildError, match="native checked"):
        lb.install("native", fallback=False)
    monkeypatch.setattr(lb, "cpu_info", lambda: ("old", {"sse4_2"}))
    monkeypatch.setattr(lb, "is_x86", lambda: True)
    with pytest.raises(lb.BuildError, match="variant portable needs avx avx2 fma f16c bmi2"):
        lb.install("portable")


def test_a_build_for_another_cpu_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(lb, "installed_build", lambda: {"installed": True, "missing_on_cpu": ["AVX512", "AMX_INT8"]})
    with pytest.raises(BackendError, match=r"uses AVX512 AMX_INT8, which this CPU lacks .*fix: python -m "
                                           r"mtr.llamacpp_build install"):
        LlamaCppBackend(RoleConfig(backend="llamacpp")).load()


@pytest.mark.model
def test_the_installed_build_decodes_a_long_prompt_in_a_child():
    r = lb.check(prompt_tokens=300)
    assert r.ok, r.message
    assert r.detail["prompt_tokens"] == 300 and r.detail["decoded_tokens"] == 16 and r.detail["features"]
    b = lb.installed_build()
    assert b["installed"] and b["missing_on_cpu"] == [] and b["features"] == r.detail["features"]
