// ebm_fast._C: the pybind11 module. No libtorch: tensors arrive as addresses, sizes and strides inside
// one argument struct per op; ebm_fast/ops.py has validated them, this file checks the invariants the
// kernels rely on (cheap, in C++, so a wrong call from Python raises instead of reading out of
// bounds) and runs the kernel with the GIL released.
//
// Adding a native op (the pattern the fused Langevin step follows):
//   1. Its argument struct in the op's header (csrc/<op>.h, like StepArgs in langevin_step.h): one
//      field per argument, pointers typed, defaults for every field; the CPU entry point
//      `void <op>_cpu(const <Op>Args&)` and, under EBM_FAST_WITH_CUDA, `void <op>_cuda(const
//      <Op>Args&, uintptr_t stream)`, in csrc/<op>_cpu.cpp and csrc/<op>_cuda.cu (listed in
//      CMakeLists.txt). Shared device/host helpers: storage.h (dtypes, clampf), philox.h (noise),
//      program_eval.h (composition weights).
//   2. Here: a `bind_<op>(m)` that binds the struct once (def_fields with one FIELD(name) per field),
//      a `check(const <Op>Args&)` of the kernel's invariants, and the two entry points taking the
//      struct (run_cpu / run_cuda: check, GIL released, run); call it from PYBIND11_MODULE.
//      Constants the Python side must agree with go into the module as attributes (export_constants).
//   3. In ebm_fast/_native.py: one function that fills the struct from validated tensors, and the
//      launchers `<op>_cpu` / `<op>_cuda` that call it; the constant checks in `_check_constants`.
//   4. In ebm_fast/ops.py: validation of user input and the choice of backend.
#include <pybind11/pybind11.h>

#include <cstddef>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "langevin_step.h"
#include "mcmc_step.h"

#ifndef EBM_FAST_VERSION
#error "EBM_FAST_VERSION must be defined by the build (setup.py / CMakeLists.txt)"
#endif
#ifndef EBM_FAST_CUDA_ARCHS
#define EBM_FAST_CUDA_ARCHS ""
#endif

namespace py = pybind11;

namespace {

// A typed pointer field exposed to Python as an integer address (tensor.data_ptr(); 0 is null).
template <class Args, class T>
void def_ptr(py::class_<Args>& cls, const char* name, T* Args::*field) {
  cls.def_property(
      name, [field](const Args& a) { return reinterpret_cast<uintptr_t>(a.*field); },
      [field](Args& a, uintptr_t p) { a.*field = reinterpret_cast<T*>(p); });
}

// Binds every field of an argument struct: pointers with def_ptr, the rest with def_readwrite.
// FIELD(name) is std::pair{"name", &Args::name} for the `Args` alias in scope.
#define FIELD(name) std::pair{#name, &Args::name}
template <class Args, class... T>
void def_fields(py::class_<Args>& cls, std::pair<const char*, T Args::*>... fields) {
  auto one = [&cls](const char* name, auto field) {
    using F = std::remove_reference_t<decltype(std::declval<Args&>().*field)>;
    if constexpr (std::is_pointer_v<F>) {
      def_ptr(cls, name, field);
    } else {
      cls.def_readwrite(name, field);
    }
  };
  (one(fields.first, fields.second), ...);
}

[[noreturn]] void bad(const char* op, const std::string& name, const std::string& expected, const std::string& got) {
  throw std::invalid_argument(std::string(op) + ": " + name + " must be " + expected + ", got " + got);
}

// The sizes every op over a program shares: B, D >= 0, 1 <= M <= MAX_NODES, 1 <= N <= MAX_LEAVES.
void check_sizes(const char* op, int64_t B, int64_t D, int M, int N) {
  if (B < 0 || D < 0) bad(op, "(B, D)", "non-negative", std::to_string(B) + ", " + std::to_string(D));
  if (M < 1 || M > ebm::MAX_NODES)
    bad(op, "M (table rows)", "in [1, " + std::to_string(ebm::MAX_NODES) + "]", std::to_string(M));
  if (N < 1 || N > ebm::MAX_LEAVES)
    bad(op, "N (leaves)", "in [1, " + std::to_string(ebm::MAX_LEAVES) + "]", std::to_string(N));
}

// Runs `kernel` on host memory, or on device memory on `stream`, after `check`, with the GIL released.
template <class Args, class Check, class Kernel>
void run_cpu(const Args& a, Check check, Kernel kernel) {
  check(a);
  py::gil_scoped_release release;
  kernel(a);
}

template <class Args, class Check, class Kernel>
void run_cuda(const Args& a, uintptr_t stream, Check check, Kernel kernel) {
  check(a);
#if defined(EBM_FAST_WITH_CUDA)
  py::gil_scoped_release release;
  kernel(a, stream);
#else
  (void)stream;
  (void)kernel;
  throw std::runtime_error(
      "ebm_fast._C was built without CUDA (nvcc was not found or EBM_FAST_NO_CUDA was set); rebuild "
      "with nvcc on PATH or CUDACXX set: pip install --no-build-isolation .");
#endif
}

void export_constants(py::module_& m) {
  m.attr("__version__") = EBM_FAST_VERSION;
#if defined(EBM_FAST_WITH_CUDA)
  m.attr("has_cuda") = true;  // compiled with CUDA; says nothing about a GPU being present
#else
  m.attr("has_cuda") = false;
#endif
  m.attr("cuda_archs") = EBM_FAST_CUDA_ARCHS;
  m.attr("DTYPE_F32") = static_cast<int>(ebm::DTYPE_F32);
  m.attr("DTYPE_F16") = static_cast<int>(ebm::DTYPE_F16);
  m.attr("DTYPE_BF16") = static_cast<int>(ebm::DTYPE_BF16);
  m.attr("ORDER_ULA") = static_cast<int>(ebm::ORDER_ULA);
  m.attr("ORDER_NOISE_FIRST") = static_cast<int>(ebm::ORDER_NOISE_FIRST);
  m.attr("NODE_LEAF") = static_cast<int>(ebm::NODE_LEAF);
  m.attr("NODE_SUM") = static_cast<int>(ebm::NODE_SUM);
  m.attr("NODE_LSE") = static_cast<int>(ebm::NODE_LSE);
  m.attr("MAX_NODES") = ebm::MAX_NODES;
  m.attr("MAX_LEAVES") = ebm::MAX_LEAVES;
  m.attr("TABLE_COLUMNS") = ebm::TABLE_COLUMNS;
}

// ---- the fused Langevin step -----------------------------------------------------------------------
void check(const ebm::StepArgs& a) {
  const char* op = "langevin_step";
  if (a.dtype < ebm::DTYPE_F32 || a.dtype > ebm::DTYPE_BF16)
    bad(op, "dtype", "0 (float32), 1 (float16) or 2 (bfloat16)", std::to_string(a.dtype));
  check_sizes(op, a.B, a.D, a.M, a.N);
  if (a.order != ebm::ORDER_ULA && a.order != ebm::ORDER_NOISE_FIRST)
    bad(op, "order", "0 (ula) or 1 (noise_first)", std::to_string(a.order));
  if (a.B > 1 && (a.x_stride < a.D || a.out_stride < a.D || a.g_stride_b < a.D))
    bad(op, "row strides (x, out, g)", ">= D = " + std::to_string(a.D),
        std::to_string(a.x_stride) + ", " + std::to_string(a.out_stride) + ", " + std::to_string(a.g_stride_b));
  if (a.B > 0 && (!a.e || !a.table || !a.energy_out || !a.flag))
    bad(op, "e, table, energy_out and flag", "non-null", "a null pointer");
  if (a.B > 0 && a.D > 0 && (!a.x || !a.out || !a.g)) bad(op, "x, out and g", "non-null", "a null pointer");
}

void bind_langevin_step(py::module_& m) {
  using Args = ebm::StepArgs;
  py::class_<Args> cls(m, "StepArgs",
                       "Arguments of the fused Langevin step (csrc/langevin_step.h); pointers are "
                       "integer addresses (0 = null). Filled by ebm_fast._native.step_args.");
  cls.def(py::init<>());
  def_fields(cls, FIELD(x), FIELD(out), FIELD(dtype), FIELD(B), FIELD(D), FIELD(x_stride), FIELD(out_stride),
             FIELD(g), FIELD(g_stride_n), FIELD(g_stride_b), FIELD(e), FIELD(table), FIELD(M), FIELD(N),
             FIELD(energy_out), FIELD(flag), FIELD(step_size_ptr), FIELD(step_size), FIELD(noise_ptr), FIELD(noise),
             FIELD(seed_ptr), FIELD(seed), FIELD(step_ptr), FIELD(step), FIELD(order), FIELD(has_clip),
             FIELD(grad_clip), FIELD(has_clamp), FIELD(lo), FIELD(hi));
  const auto chk = [](const Args& a) { check(a); };
  m.def(
      "langevin_step_cpu", [chk](const Args& a) { run_cpu(a, chk, ebm::langevin_step_cpu); }, py::arg("args"),
      "Fused Langevin step on host memory (blocks until done).");
#if defined(EBM_FAST_WITH_CUDA)
  const auto step_cuda = ebm::langevin_step_cuda;
#else
  const std::nullptr_t step_cuda = nullptr;
#endif
  m.def(
      "langevin_step_cuda", [chk, step_cuda](const Args& a, uintptr_t stream) { run_cuda(a, stream, chk, step_cuda); },
      py::arg("args"), py::arg("stream"),
      "Fused Langevin step on device memory, enqueued on `stream` (a cudaStream_t as an integer; "
      "asynchronous).");
}

// ---- the fused MALA/HMC operations (csrc/mcmc_step.h) -------------------------------------------------
void check(const ebm::MCMCArgs& a, bool accept) {
  const char* op = accept ? "mcmc_accept" : "mcmc_move";
  check_sizes(op, a.B, a.D, a.M, a.N);
  if (a.phase < ebm::PHASE_MALA || a.phase > ebm::PHASE_HMC) bad(op, "phase", "0, 1 or 2", std::to_string(a.phase));
  if (a.method != ebm::METHOD_MALA && a.method != ebm::METHOD_HMC)
    bad(op, "method", "0 (mala) or 1 (hmc)", std::to_string(a.method));
  if (!(a.temperature > 0.0f)) bad(op, "temperature", "> 0", std::to_string(a.temperature));
  if (a.B == 0) return;
  if (!a.x || !a.out || !a.g || !a.e || !a.table || !a.step_size || !a.energy)
    bad(op, "x, out, g, e, table, step_size and energy", "non-null", "a null pointer");
  const bool hmc = accept ? a.method == ebm::METHOD_HMC : a.phase != ebm::PHASE_MALA;
  if (hmc && !a.momentum) bad(op, "momentum", "non-null for HMC", "a null pointer");
  if (accept && (!a.g_state || !a.e_state || !a.accept_out || !a.alpha_out))
    bad(op, "g_state, e_state, accept_out and alpha_out", "non-null", "a null pointer");
}

void bind_mcmc(py::module_& m) {
  using Args = ebm::MCMCArgs;
  py::class_<Args> cls(m, "MCMCArgs",
                       "Arguments of the fused MALA/HMC operations (csrc/mcmc_step.h); pointers are integer "
                       "addresses (0 = null). Filled by ebm_fast._native.mcmc_args.");
  cls.def(py::init<>());
  def_fields(cls, FIELD(x), FIELD(out), FIELD(g), FIELD(e), FIELD(g_state), FIELD(e_state), FIELD(table), FIELD(M),
             FIELD(N), FIELD(B), FIELD(D), FIELD(step_size), FIELD(inv_mass), FIELD(momentum), FIELD(energy),
             FIELD(accept_out), FIELD(alpha_out), FIELD(temperature), FIELD(seed_ptr), FIELD(seed), FIELD(step_ptr),
             FIELD(step), FIELD(phase), FIELD(method));
  const auto move_check = [](const Args& a) { check(a, false); };
  const auto accept_check = [](const Args& a) { check(a, true); };
  m.def(
      "mcmc_move_cpu", [move_check](const Args& a) { run_cpu(a, move_check, ebm::mcmc_move_cpu); },
      py::arg("args"), "MALA/HMC move on host memory.");
  m.def(
      "mcmc_accept_cpu", [accept_check](const Args& a) { run_cpu(a, accept_check, ebm::mcmc_accept_cpu); },
      py::arg("args"), "MALA/HMC accept on host memory.");
#if defined(EBM_FAST_WITH_CUDA)
  const auto move_cuda = ebm::mcmc_move_cuda;
  const auto accept_cuda = ebm::mcmc_accept_cuda;
#else
  const std::nullptr_t move_cuda = nullptr, accept_cuda = nullptr;
#endif
  m.def(
      "mcmc_move_cuda",
      [move_check, move_cuda](const Args& a, uintptr_t stream) { run_cuda(a, stream, move_check, move_cuda); },
      py::arg("args"), py::arg("stream"), "MALA/HMC move on device memory, enqueued on `stream` (asynchronous).");
  m.def(
      "mcmc_accept_cuda",
      [accept_check, accept_cuda](const Args& a, uintptr_t stream) {
        run_cuda(a, stream, accept_check, accept_cuda);
      },
      py::arg("args"), py::arg("stream"), "MALA/HMC accept on device memory, enqueued on `stream` (asynchronous).");
  m.attr("MCMC_ACCEPT_TAG") = ebm::ACCEPT_TAG;
}

#undef FIELD

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "ebm_fast._C: the fused Langevin step (docs/contract.md §3) in C++/OpenMP and CUDA; see ebm_fast._native";
  export_constants(m);
  bind_langevin_step(m);
  bind_mcmc(m);
}
