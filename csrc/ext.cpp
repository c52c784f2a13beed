// ebm_fast._C: the pybind11 module. No libtorch: tensors arrive as addresses, sizes, strides and
// dtype codes in the order documented at the top of ebm_fast/_native.py; this file checks the
// invariants the kernels rely on and calls them with the GIL released.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "langevin_step.h"
#include "program_eval.h"

#ifndef EBM_FAST_VERSION
#error "EBM_FAST_VERSION must be defined by the build (setup.py / CMakeLists.txt)"
#endif
#ifndef EBM_FAST_CUDA_ARCHS
#define EBM_FAST_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

template <class T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

[[noreturn]] void bad(const std::string& name, const std::string& expected, const std::string& got) {
  throw std::invalid_argument("langevin_step: " + name + " must be " + expected + ", got " + got);
}

ebm::StepArgs make_args(uintptr_t x_ptr, uintptr_t out_ptr, int dtype_code, int64_t B, int64_t D,
                        int64_t x_stride, int64_t out_stride, uintptr_t g_ptr, int64_t g_stride_n,
                        int64_t g_stride_b, uintptr_t e_ptr, uintptr_t table_ptr, int64_t M, int64_t N,
                        uintptr_t step_size_ptr, float step_size, uintptr_t noise_ptr, float noise,
                        uintptr_t seed_ptr, uint64_t seed, uintptr_t step_ptr, int64_t step, int order,
                        bool has_clip, float grad_clip, bool has_clamp, float lo, float hi,
                        uintptr_t energy_out_ptr, uintptr_t flag_ptr) {
  if (dtype_code < ebm::DTYPE_F32 || dtype_code > ebm::DTYPE_BF16)
    bad("dtype_code", "0 (float32), 1 (float16) or 2 (bfloat16)", std::to_string(dtype_code));
  if (B < 0 || D < 0) bad("(B, D)", "non-negative", std::to_string(B) + ", " + std::to_string(D));
  if (M < 1 || M > ebm::MAX_NODES) bad("M (table rows)", "in [1, 64]", std::to_string(M));
  if (N < 1 || N > ebm::MAX_LEAVES) bad("N (leaves)", "in [1, 32]", std::to_string(N));
  if (order != ebm::ORDER_ULA && order != ebm::ORDER_NOISE_FIRST)
    bad("order", "0 (ula) or 1 (noise_first)", std::to_string(order));
  if (B > 1 && (x_stride < D || out_stride < D || g_stride_b < D))
    bad("row strides (x, out, grads)", ">= D = " + std::to_string(D),
        std::to_string(x_stride) + ", " + std::to_string(out_stride) + ", " + std::to_string(g_stride_b));
  if (B > 0 && (!e_ptr || !table_ptr || !energy_out_ptr || !flag_ptr))
    bad("energies, table, energy_out and flag pointers", "non-null", "a null pointer");
  if (B > 0 && D > 0 && (!x_ptr || !out_ptr || !g_ptr))
    bad("x, out and grads pointers", "non-null", "a null pointer");
  ebm::StepArgs a;
  a.x = ptr<const void>(x_ptr);
  a.out = ptr<void>(out_ptr);
  a.dtype = dtype_code;
  a.B = B;
  a.D = D;
  a.x_stride = x_stride;
  a.out_stride = out_stride;
  a.g = ptr<const void>(g_ptr);
  a.g_stride_n = g_stride_n;
  a.g_stride_b = g_stride_b;
  a.e = ptr<const float>(e_ptr);
  a.table = ptr<const float>(table_ptr);
  a.M = static_cast<int>(M);
  a.N = static_cast<int>(N);
  a.step_size_ptr = ptr<const float>(step_size_ptr);
  a.step_size = step_size;
  a.noise_ptr = ptr<const float>(noise_ptr);
  a.noise = noise;
  a.seed_ptr = ptr<const int64_t>(seed_ptr);
  a.seed = seed;
  a.step_ptr = ptr<const int64_t>(step_ptr);
  a.step = step;
  a.order = order;
  a.has_clip = has_clip;
  a.grad_clip = grad_clip;
  a.has_clamp = has_clamp;
  a.lo = lo;
  a.hi = hi;
  a.energy_out = ptr<float>(energy_out_ptr);
  a.flag = ptr<int32_t>(flag_ptr);
  return a;
}

void step_cpu(uintptr_t x_ptr, uintptr_t out_ptr, int dtype_code, int64_t B, int64_t D, int64_t x_stride,
              int64_t out_stride, uintptr_t g_ptr, int64_t g_stride_n, int64_t g_stride_b, uintptr_t e_ptr,
              uintptr_t table_ptr, int64_t M, int64_t N, uintptr_t step_size_ptr, float step_size,
              uintptr_t noise_ptr, float noise, uintptr_t seed_ptr, uint64_t seed, uintptr_t step_ptr,
              int64_t step, int order, bool has_clip, float grad_clip, bool has_clamp, float lo, float hi,
              uintptr_t energy_out_ptr, uintptr_t flag_ptr) {
  const ebm::StepArgs a = make_args(x_ptr, out_ptr, dtype_code, B, D, x_stride, out_stride, g_ptr,
                                    g_stride_n, g_stride_b, e_ptr, table_ptr, M, N, step_size_ptr,
                                    step_size, noise_ptr, noise, seed_ptr, seed, step_ptr, step, order,
                                    has_clip, grad_clip, has_clamp, lo, hi, energy_out_ptr, flag_ptr);
  py::gil_scoped_release release;
  ebm::langevin_step_cpu(a);
}

void step_cuda(uintptr_t x_ptr, uintptr_t out_ptr, int dtype_code, int64_t B, int64_t D, int64_t x_stride,
               int64_t out_stride, uintptr_t g_ptr, int64_t g_stride_n, int64_t g_stride_b, uintptr_t e_ptr,
               uintptr_t table_ptr, int64_t M, int64_t N, uintptr_t step_size_ptr, float step_size,
               uintptr_t noise_ptr, float noise, uintptr_t seed_ptr, uint64_t seed, uintptr_t step_ptr,
               int64_t step, int order, bool has_clip, float grad_clip, bool has_clamp, float lo, float hi,
               uintptr_t energy_out_ptr, uintptr_t flag_ptr, uintptr_t stream) {
  const ebm::StepArgs a = make_args(x_ptr, out_ptr, dtype_code, B, D, x_stride, out_stride, g_ptr,
                                    g_stride_n, g_stride_b, e_ptr, table_ptr, M, N, step_size_ptr,
                                    step_size, noise_ptr, noise, seed_ptr, seed, step_ptr, step, order,
                                    has_clip, grad_clip, has_clamp, lo, hi, energy_out_ptr, flag_ptr);
#if defined(EBM_FAST_WITH_CUDA)
  py::gil_scoped_release release;
  ebm::langevin_step_cuda(a, stream);
#else
  (void)a;
  (void)stream;
  throw std::runtime_error(
      "ebm_fast._C was built without CUDA (nvcc was not found or EBM_FAST_NO_CUDA was set); rebuild "
      "with nvcc on PATH or CUDACXX set: pip install --no-build-isolation .");
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ebm_fast._C: the fused Langevin step (SPEC §3) in C++/OpenMP and CUDA (see ebm_fast/_native.py)";
  m.attr("__version__") = EBM_FAST_VERSION;
#if defined(EBM_FAST_WITH_CUDA)
  m.attr("has_cuda") = true;  // compiled with CUDA; says nothing about a GPU being present
#else
  m.attr("has_cuda") = false;
#endif
  m.attr("cuda_archs") = EBM_FAST_CUDA_ARCHS;
  m.def("langevin_step_cpu", &step_cpu,
        "Fused Langevin step on host memory; arguments as documented in ebm_fast/_native.py.");
  m.def("langevin_step_cuda", &step_cuda,
        "Fused Langevin step on device memory, enqueued on the given stream (asynchronous); arguments "
        "as documented in ebm_fast/_native.py, then the cudaStream_t as an integer.");
}
