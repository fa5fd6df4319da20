// The emulator's launch entry point: finds a kernel by name, runs its grid block by block, each CUDA
// thread a fiber (see cuda/emulate.h), and takes its arguments as cuLaunchKernel does (an array of
// pointers to the values, device pointers being host addresses here).
#include <ucontext.h>

#include <cstdio>
#include <mutex>
#include <utility>
#include <vector>

#include "attention.cu"
#include "columns.cu"
#include "optim.cu"
#include "rows.cu"

namespace {

template <class... A, std::size_t... I>
void call_with(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <class... A>
void call(void (*kernel)(A...), void** args) {
  call_with(kernel, args, std::index_sequence_for<A...>{});
}

struct Kernel {
  const char* name;
  void (*run)(void**);
};

#define KERNEL(name) \
  Kernel { #name, [](void** args) { call(name, args); } }

const Kernel kernels[] = {
    KERNEL(repdiff_softmax),
    KERNEL(repdiff_softmax_grad),
    KERNEL(repdiff_norm_affine),
    KERNEL(repdiff_norm_affine_grad_x),
    KERNEL(repdiff_row_stats),
    KERNEL(repdiff_gelu),
    KERNEL(repdiff_gelu_grad),
    KERNEL(repdiff_gated_residual),
    KERNEL(repdiff_gate),
    KERNEL(repdiff_column_sums),
    KERNEL(repdiff_sum_parts),
    KERNEL(repdiff_attention_fwd_f32),
    KERNEL(repdiff_attention_fwd_bf16),
    KERNEL(repdiff_attention_grad_kv_f32),
    KERNEL(repdiff_attention_grad_kv_bf16),
    KERNEL(repdiff_attention_grad_q_f32),
    KERNEL(repdiff_attention_grad_q_bf16),
    KERNEL(repdiff_attention_delta),
    KERNEL(repdiff_sum_squares),
    KERNEL(repdiff_clip_factor),
    KERNEL(repdiff_adamw),
    KERNEL(repdiff_ema),
};

constexpr unsigned char CANARY = 0xa5;
constexpr std::size_t CANARY_BYTES = 256;
constexpr std::size_t STACK_BYTES = 128 << 10;

// One CUDA thread.
struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  emu::Parked parked = emu::Parked::Running;
  dim3 index;
};

// The scheduler of the running launch.
struct Scheduler {
  ucontext_t main;
  std::vector<Fiber> fibers;
  std::size_t current = 0;
  const Kernel* kernel = nullptr;
  void** args = nullptr;
};

Scheduler* scheduler = nullptr;

void fiber_entry() {
  Scheduler& s = *scheduler;
  s.kernel->run(s.args);
  s.fibers[s.current].parked = emu::Parked::Done;
  swapcontext(&s.fibers[s.current].context, &s.main);
}

}  // namespace

void emu::park(emu::Parked at) {
  Fiber& fiber = scheduler->fibers[scheduler->current];
  fiber.parked = at;
  swapcontext(&fiber.context, &scheduler->main);
}

namespace {

// Runs one block to its end: the ready fibers in turn, then whichever barrier every live thread of its
// scope has reached is opened. Returns false when no barrier can open (threads of a block or a warp
// waiting at different barriers: a kernel bug that hangs a GPU).
bool run_block(Scheduler& s, unsigned threads) {
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = s.fibers[t];
    f.parked = emu::Parked::Running;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = STACK_BYTES;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_entry, 0);
  }
  const unsigned warps = threads / 32;
  for (;;) {
    for (unsigned t = 0; t < threads; ++t) {
      Fiber& f = s.fibers[t];
      if (f.parked != emu::Parked::Running) continue;
      s.current = t;
      emu::thread_index = f.index;
      swapcontext(&s.main, &f.context);
    }
    bool all_done = true, opened = false;
    // A warp barrier opens when each of its live lanes waits there.
    for (unsigned w = 0; w < warps; ++w) {
      bool waiting = false, blocked = false;
      for (unsigned t = w * 32; t < w * 32 + 32; ++t) {
        waiting |= s.fibers[t].parked == emu::Parked::Warp;
        blocked |= s.fibers[t].parked == emu::Parked::Block;
      }
      if (waiting && !blocked) {
        for (unsigned t = w * 32; t < w * 32 + 32; ++t)
          if (s.fibers[t].parked == emu::Parked::Warp) s.fibers[t].parked = emu::Parked::Running;
        opened = true;
      }
    }
    if (opened) continue;
    // The block barrier opens when each live thread waits there.
    bool block_waiting = false, other = false;
    for (unsigned t = 0; t < threads; ++t) {
      emu::Parked p = s.fibers[t].parked;
      all_done &= p == emu::Parked::Done;
      block_waiting |= p == emu::Parked::Block;
      other |= p == emu::Parked::Warp;
    }
    if (all_done) return true;
    if (block_waiting && !other) {
      for (unsigned t = 0; t < threads; ++t)
        if (s.fibers[t].parked == emu::Parked::Block) s.fibers[t].parked = emu::Parked::Running;
      continue;
    }
    return false;
  }
}

}  // namespace

// Runs kernel `name` over grid[3] blocks of block[3] threads with `shared` bytes of dynamic shared memory,
// block by block, each block's threads as fibers on this thread. Launches are serialised: the running
// block, its static shared memory and the grid's dimensions are process-wide. Returns 0, or 1 with a
// message in error[error_len].
extern "C" int repdiff_emulate(const char* name, const unsigned* grid, const unsigned* block, unsigned shared,
                               void** args, char* error, std::size_t error_len) {
  static std::mutex one_launch_at_a_time;
  std::lock_guard<std::mutex> lock(one_launch_at_a_time);
  const Kernel* kernel = nullptr;
  for (const Kernel& k : kernels)
    if (std::strcmp(k.name, name) == 0) kernel = &k;
  if (!kernel) {
    std::snprintf(error, error_len, "no kernel named %s", name);
    return 1;
  }
  const unsigned threads = block[0] * block[1] * block[2];
  if (threads == 0 || threads % 32 != 0) {
    std::snprintf(error, error_len, "%s: %u threads per block; the kernels need whole warps", name, threads);
    return 1;
  }
  emu::grid_dim = dim3(grid[0], grid[1], grid[2]);
  emu::block_dim = dim3(block[0], block[1], block[2]);
  const std::size_t bytes = (shared + CANARY_BYTES + 127) / 128 * 128;
  std::unique_ptr<char, decltype(&std::free)> dynamic(static_cast<char*>(std::aligned_alloc(128, bytes)), &std::free);
  std::unique_ptr<uint64_t[]> slots(new uint64_t[threads]);
  Scheduler s;
  s.kernel = kernel;
  s.args = args;
  s.fibers.resize(threads);
  for (unsigned t = 0; t < threads; ++t) {
    s.fibers[t].stack.reset(new char[STACK_BYTES]);
    s.fibers[t].index = dim3(t % block[0], (t / block[0]) % block[1], t / (block[0] * block[1]));
  }
  scheduler = &s;
  emu::block.dynamic_shared = dynamic.get();
  emu::block.slots = reinterpret_cast<uint64_t(*)[32]>(slots.get());
  int status = 0;
  const unsigned long blocks = static_cast<unsigned long>(grid[0]) * grid[1] * grid[2];
  for (unsigned long b = 0; b < blocks && status == 0; ++b) {
    std::memset(dynamic.get(), CANARY, bytes);
    emu::block_index = dim3(b % grid[0], (b / grid[0]) % grid[1], b / (grid[0] * grid[1]));
    if (!run_block(s, threads)) {
      std::snprintf(error, error_len, "%s: block %lu hangs: its threads wait at different barriers", name, b);
      status = 1;
      break;
    }
    for (std::size_t i = shared; i < bytes; ++i)
      if (static_cast<unsigned char>(dynamic.get()[i]) != CANARY) {
        std::snprintf(error, error_len, "%s wrote past its %u bytes of dynamic shared memory (byte %zu)", name,
                      shared, i);
        status = 1;
        break;
      }
  }
  scheduler = nullptr;
  emu::block = emu::Block{};
  return status;
}
