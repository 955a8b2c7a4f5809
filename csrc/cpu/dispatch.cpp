// Runtime ISA dispatch of the CPU kernels (ATen's CPU_CAPABILITY / DispatchStub scheme).
//
// This file is compiled WITHOUT ISA flags: it and the schemas (csrc/diffaccel.cpp) are all that
// runs at load time. At load it detects the CPU's features (__builtin_cpu_supports, cpuid plus the
// OS's XSAVE state), picks the highest default level (kDefaultCap) that was built and that the CPU
// has, or the level DIFFACCEL_CPU_CAPABILITY=generic|avx2|avx512 asks for (a level the CPU lacks or the build left
// out is refused with a warning; the highest available level below it is used), fills the table
// from that level's object files (kernels.h) and registers forwarding functions for the CPU
// dispatch key. No code of another level is ever executed. torch.ops.diffaccel.cpu_capability()
// reports the level in use.
//
// The build says which levels exist: DIFFACCEL_CPU_HAVE_AVX2 / DIFFACCEL_CPU_HAVE_AVX512 (x86-64
// only; the generic level always exists).
#include <torch/library.h>

#include <cctype>
#include <cstdlib>
#include <string>
#include <utility>

#include "kernels.h"

namespace diffaccel::cpu {

// Each kernel source's part of the table, per level (defined in that level's object files).
#define DIFFACCEL_DECLARE_CPU_LEVEL(LEVEL)        \
  namespace LEVEL {                               \
  void fill_forward_kernels(CpuKernels& k);       \
  void fill_step_kernels(CpuKernels& k);          \
  void fill_filter_kernels(CpuKernels& k);        \
  void fill_conv_kernels(CpuKernels& k);          \
  void fill_solver_kernels(CpuKernels& k);        \
  }
DIFFACCEL_DECLARE_CPU_LEVEL(DEFAULT)
DIFFACCEL_DECLARE_CPU_LEVEL(AVX2)
DIFFACCEL_DECLARE_CPU_LEVEL(AVX512)
#undef DIFFACCEL_DECLARE_CPU_LEVEL

namespace {

enum class Level { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr const char* kNames[] = {"generic", "avx2", "avx512"};

const char* name(Level l) { return kNames[static_cast<int>(l)]; }

bool built(Level l) {
  switch (l) {
    case Level::kGeneric: return true;
#ifdef DIFFACCEL_CPU_HAVE_AVX2
    case Level::kAvx2: return true;
#endif
#ifdef DIFFACCEL_CPU_HAVE_AVX512
    case Level::kAvx512: return true;
#endif
    default: return false;
  }
}

// The CPU (and the OS's saved vector state, which __builtin_cpu_supports includes) has the
// instructions of level l: the flags each level's sources are compiled with.
bool cpu_has(Level l) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  switch (l) {
    case Level::kGeneric: return true;
    case Level::kAvx2: return avx2;
    case Level::kAvx512:
      return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  }
  return false;
#else
  return l == Level::kGeneric;
#endif
}

bool available(Level l) { return built(l) && cpu_has(l); }

// The highest level `auto` picks. AVX-512 is built and tested but opt-in
// (DIFFACCEL_CPU_CAPABILITY=avx512) until `benchmarks/run.py --cpu-capability avx2 avx512` shows it
// winning on an AVX-512 machine: none of this project's machines has had one since it was written,
// and wider vectors can lose on memory-bound kernels (frequency licences, split loads).
constexpr Level kDefaultCap = Level::kAvx2;

Level best_at_most(Level cap) {
  for (int l = static_cast<int>(cap); l > 0; --l) {
    if (available(static_cast<Level>(l))) return static_cast<Level>(l);
  }
  return Level::kGeneric;
}

// The level in use: chosen once, at load (the registration below asks for it).
Level choose() {
  const char* env = std::getenv("DIFFACCEL_CPU_CAPABILITY");
  std::string req = env == nullptr ? "" : env;
  for (char& c : req) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (req.empty() || req == "auto") return best_at_most(kDefaultCap);
  if (req == "default") req = "generic";  // ATen's name for the level
  for (Level l : {Level::kGeneric, Level::kAvx2, Level::kAvx512}) {
    if (req != name(l)) continue;
    if (available(l)) return l;
    const Level fallback = best_at_most(l);
    TORCH_WARN("diffaccel: DIFFACCEL_CPU_CAPABILITY=", name(l), " is not available (",
               built(l) ? "this CPU lacks its instructions" : "this build does not include it", "); using ",
               name(fallback));
    return fallback;
  }
  const Level best = best_at_most(kDefaultCap);
  TORCH_WARN("diffaccel: DIFFACCEL_CPU_CAPABILITY must be auto, generic, avx2 or avx512, got '", env, "'; using ",
             name(best));
  return best;
}

std::pair<Level, CpuKernels> make_table() {
  const Level l = choose();
  CpuKernels k{};
  switch (l) {
#define DIFFACCEL_FILL(LEVEL)             \
  LEVEL::fill_forward_kernels(k);         \
  LEVEL::fill_step_kernels(k);            \
  LEVEL::fill_filter_kernels(k);          \
  LEVEL::fill_conv_kernels(k);            \
  LEVEL::fill_solver_kernels(k);          \
  break;
#ifdef DIFFACCEL_CPU_HAVE_AVX512
    case Level::kAvx512: DIFFACCEL_FILL(AVX512)
#endif
#ifdef DIFFACCEL_CPU_HAVE_AVX2
    case Level::kAvx2: DIFFACCEL_FILL(AVX2)
#endif
    default: DIFFACCEL_FILL(DEFAULT)
#undef DIFFACCEL_FILL
  }
  return {l, k};
}

const std::pair<Level, CpuKernels>& active() {
  static const std::pair<Level, CpuKernels> table = make_table();
  return table;
}

// A dispatcher kernel with the signature of table member `Member` that calls the active level's.
template <auto Member, typename Fn>
struct Forward;
template <auto Member, typename R, typename... A>
struct Forward<Member, R (*)(A...)> {
  static R call(A... a) { return (active().second.*Member)(std::forward<A>(a)...); }
};
#define DIFFACCEL_FORWARD(NAME) &Forward<&CpuKernels::NAME, decltype(CpuKernels::NAME)>::call

}  // namespace

std::string cpu_capability() { return name(active().first); }

}  // namespace diffaccel::cpu

#include "../solver_step.h"
#include "../step_entry.h"

namespace diffaccel::cpu {

TORCH_LIBRARY_IMPL(diffaccel, CPU, m) {
  active();  // choose the level now, at load
  m.impl("add_noise", DIFFACCEL_FORWARD(add_noise));
  m.impl("predict_x0", DIFFACCEL_FORWARD(predict_x0));
  m.impl("masked_project", DIFFACCEL_FORWARD(masked_project));
  m.impl("cfg_combine", DIFFACCEL_FORWARD(cfg_combine));
  m.impl("ddpm_step", &ddpm_step_op<DIFFACCEL_FORWARD(run_ddpm)>);
  m.impl("ddim_step", &ddim_step_op<DIFFACCEL_FORWARD(run_ddim)>);
  m.impl("gaussian_filter", DIFFACCEL_FORWARD(gaussian_filter));
  m.impl("winograd_weight", DIFFACCEL_FORWARD(winograd_weight));
  m.impl("conv3x3_winograd", DIFFACCEL_FORWARD(conv3x3_winograd));
  m.impl("dpmpp_2m_step", &dpmpp_2m_step_op<DIFFACCEL_FORWARD(run_solver)>);
  m.impl("unipc_step", &unipc_step_op<DIFFACCEL_FORWARD(run_solver)>);
  m.impl("heun_step", DIFFACCEL_FORWARD(heun_step));
}

}  // namespace diffaccel::cpu
