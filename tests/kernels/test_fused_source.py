"""The fused kernels' CUDA source, run on the CPU: g++ compiles it with one std::thread per
CUDA thread and a std::barrier for ``__syncthreads``, and its results must equal the
NumPy twins. This checks the kernels' own text (indexing, shared-memory double
buffering, Philox, Box-Muller) on machines without a GPU; skipped without g++.
"""

import shutil
import subprocess

import numpy as np
import pytest

from pgt.kernels import RingParams
from pgt.kernels._fused import _SOURCE, _block_shape, _key, accumulate_twin, ring_twin
from pgt.kernels._ring import NOISE_STREAM

_PRELUDE = r"""
#include <barrier>
#include <cmath>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>
#define __device__
#define __forceinline__ inline
#define __global__
#define __restrict__
struct Dim { unsigned x = 0; };
thread_local Dim threadIdx;
Dim blockIdx, blockDim, gridDim;
std::barrier<>* g_barrier = nullptr;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }
inline void sincos(double x, double* s, double* c) { *s = std::sin(x); *c = std::cos(x); }
inline void sincosf(float x, float* s, float* c) { *s = std::sin(x); *c = std::cos(x); }
using std::sqrt; using std::log; using std::sin; using std::cos;
alignas(16) unsigned char shared_bytes[1 << 16];
"""

_MAIN = r"""
template <class F> void launch(unsigned grid, unsigned block, F body) {
    blockDim.x = block; gridDim.x = grid;
    for (unsigned g = 0; g < grid; ++g) {   // blocks one after another, threads at once
        blockIdx.x = g;
        std::barrier<> bar(block); g_barrier = &bar;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; ++t) threads.emplace_back([&, t] { threadIdx.x = t; body(); });
        for (auto& th : threads) th.join();
    }
}
template <class R> std::vector<R> load(const char* path, size_t n) {
    std::vector<R> v(n); FILE* f = fopen(path, "rb"); fread(v.data(), sizeof(R), n, f); fclose(f); return v;
}
template <class R> void save(const char* path, const std::vector<R>& v) {
    FILE* f = fopen(path, "wb"); fwrite(v.data(), sizeof(R), v.size(), f); fclose(f);
}
template <class R, class Ring> void ring(char** argv, Ring kernel) {
    long long batch; int steps, nodes, per_block; double p[9]; unsigned tick, stream, key0, key1;
    scanf("%lld %d %d %d", &batch, &steps, &nodes, &per_block);
    for (double& x : p) scanf("%lf", &x);
    scanf("%u %u %u %u", &tick, &stream, &key0, &key1);
    auto u = load<R>(argv[3], batch * steps); auto mask = load<R>(argv[4], nodes);
    std::vector<R> feats(batch * steps * nodes, R(-999));
    launch((batch + per_block - 1) / per_block, per_block * nodes, [&] {
        kernel(u.data(), mask.data(), feats.data(), batch, steps, nodes, per_block, R(p[0]), R(p[1]),
               R(p[2]), R(p[3]), R(p[4]), R(p[5]), R(p[6]), R(p[7]), R(p[8]), tick, stream, key0, key1); });
    save(argv[5], feats);
}
template <class R, class Acc> void acc(char** argv, Acc kernel) {
    long long size; int n_k, per_element, gaussian; unsigned step, stream, key0, key1, grid, block;
    scanf("%lld %d %d %u %u %u %u %d %u %u", &size, &n_k, &per_element, &step, &stream, &key0,
          &key1, &gaussian, &grid, &block);
    auto coeffs = load<R>(argv[3], per_element ? n_k * size : n_k);
    std::vector<R> out(size, R(-999));
    launch(grid, block, [&] { kernel(coeffs.data(), out.data(), size, n_k, per_element, step, stream,
                                     key0, key1, gaussian); });
    save(argv[5], out);
}
int main(int argc, char** argv) {   // argv: ring|acc, double|float, in1, in2, out; numbers on stdin
    bool dbl = std::string(argv[2]) == "double";
    if (std::string(argv[1]) == "ring") dbl ? ring<double>(argv, f64::ring_fused) : ring<float>(argv, f32::ring_fused);
    else dbl ? acc<double>(argv, f64::accumulate_fused) : acc<float>(argv, f32::accumulate_fused);
}
"""

RINGS = [
    (RingParams(nodes=5, gain=0.95, nu=3.0, tap=0.4, bias=0.3, noise=0.03, drift=0.1, drift_period=7), 107, 9),
    (RingParams(), 23, 6),
    (RingParams(nodes=1, tap=0.0, noise=0.01), 300, 4),
    (RingParams(nodes=300, noise=0.02), 3, 5),
]


def _namespaced(name: str, real: str) -> str:
    body = _SOURCE.replace("REAL", real).replace('extern "C" ', "")
    body = body.replace("extern __shared__ unsigned char shared_bytes[];", "")
    return f"namespace {name} {{\n{body}\n}}\n"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    folder = tmp_path_factory.mktemp("cuda_emu")
    source = folder / "emu.cpp"
    source.write_text(_PRELUDE + _namespaced("f64", "double") + _namespaced("f32", "float") + _MAIN)
    exe = folder / "emu"
    build = subprocess.run(["g++", "-std=c++20", "-O0", "-pthread", "-ffp-contract=off", "-o", str(exe),
                            str(source)], capture_output=True, text=True, check=False)
    if build.returncode != 0 and "barrier" in build.stderr and "No such file" in build.stderr:
        pytest.skip("g++ lacks C++20 <barrier>")
    assert build.returncode == 0, build.stderr

    def run(kind: str, dtype, numbers, first: np.ndarray, second: np.ndarray, out_len: int):
        real = "double" if dtype == np.float64 else "float"
        paths = [folder / name for name in ("a.bin", "b.bin", "out.bin")]
        first.astype(dtype).tofile(paths[0])
        second.astype(dtype).tofile(paths[1])
        subprocess.run([str(exe), kind, real, *map(str, paths)], input=" ".join(map(str, numbers)),
                       text=True, check=True, timeout=60)
        return np.fromfile(paths[2], dtype=dtype, count=out_len)

    return run


@pytest.mark.parametrize(("params", "batch", "steps"), RINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ring_kernel_source_equals_its_twin(emulator, params, batch, steps, dtype):
    tick, seed = 3, 2**33 + 5
    u = np.random.default_rng(0).uniform(-1, 1, (batch, steps)).astype(dtype)
    per_block, _ = _block_shape(params.nodes)
    reals = [params.gain_at(tick), params.kappa, params.inject, params.bias, params.p_sat, params.nu,
             params.tap, 1.0 - 2.0 * params.tap, params.noise]
    numbers = [batch, steps, params.nodes, per_block, *map(repr, reals), tick, NOISE_STREAM,
               *map(int, _key(seed))]
    got = emulator("ring", dtype, numbers, u, params.mask(np, dtype), batch * steps * params.nodes)
    twin = ring_twin(params, u, tick=tick, seed=seed).ravel()
    if dtype == np.float64:
        np.testing.assert_allclose(got, twin, rtol=1e-13, atol=0)
    else:   # glibc's sinf/cosf against NumPy's float32 sin/cos
        np.testing.assert_allclose(got, twin, rtol=1e-4, atol=1e-6 * np.abs(twin).max())


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
@pytest.mark.parametrize("per_element", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_accumulate_kernel_source_equals_its_twin(emulator, dist, per_element, dtype):
    size, k, seed = 1001, 5, 2**40 + 3
    coeffs = np.random.default_rng(1).normal(size=(k, size) if per_element else k)
    numbers = [size, k, int(per_element), 6, 1, *map(int, _key(seed)), int(dist == "gaussian"), 3, 16]
    got = emulator("acc", dtype, numbers, coeffs, np.zeros(1), size)   # 3 x 16 threads: grid-stride
    twin = accumulate_twin(seed, 6, coeffs, size, dist, stream=1, dtype=dtype)
    np.testing.assert_allclose(got, twin, rtol=1e-13 if dtype == np.float64 else 1e-6, atol=0)
