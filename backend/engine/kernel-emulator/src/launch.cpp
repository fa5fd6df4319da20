// The emulator's launch entry point: finds a kernel by name, runs its grid block by block with one
// std::thread per CUDA thread, and takes its arguments as cuLaunchKernel does (an array of pointers to
// the values, device pointers being host addresses here).
#include <cstdio>
#include <mutex>
#include <thread>
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

}  // namespace

// Runs kernel `name` over grid[3] blocks of block[3] threads with `shared` bytes of dynamic shared memory:
// one std::thread per CUDA thread, reused block after block (a fresh set of barriers for each block).
// Launches are serialised: the running block, its static shared memory and the grid's dimensions are
// process-wide. Returns 0, or 1 with a message in error[error_len].
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
  const unsigned long blocks = static_cast<unsigned long>(grid[0]) * grid[1] * grid[2];
  std::barrier<> between_blocks(threads);
  std::unique_ptr<emu::Block> state;
  bool overrun = false;
  std::size_t overrun_at = 0;
  auto next_block = [&](unsigned long b) {
    std::memset(dynamic.get(), CANARY, bytes);
    state = std::make_unique<emu::Block>(threads, dynamic.get());
    emu::block = state.get();
    (void)b;
  };
  next_block(0);
  std::vector<std::thread> workers;
  workers.reserve(threads);
  for (unsigned t = 0; t < threads; ++t)
    workers.emplace_back([&, t] {
      emu::thread_index = dim3(t % block[0], (t / block[0]) % block[1], t / (block[0] * block[1]));
      for (unsigned long b = 0; b < blocks; ++b) {
        emu::block_index = dim3(b % grid[0], (b / grid[0]) % grid[1], b / (grid[0] * grid[1]));
        kernel->run(args);
        // A thread that has finished no longer counts at its block's barriers (as on a GPU).
        emu::warp().barrier.arrive_and_drop();
        emu::block->barrier.arrive_and_drop();
        between_blocks.arrive_and_wait();
        if (t == 0) {
          for (std::size_t i = shared; i < bytes && !overrun; ++i)
            if (static_cast<unsigned char>(dynamic.get()[i]) != CANARY) {
              overrun = true;
              overrun_at = i;
            }
          if (b + 1 < blocks) next_block(b + 1);
        }
        between_blocks.arrive_and_wait();
      }
    });
  for (std::thread& w : workers) w.join();
  emu::block = nullptr;
  if (overrun) {
    std::snprintf(error, error_len, "%s wrote past its %u bytes of dynamic shared memory (byte %zu)", name, shared,
                  overrun_at);
    return 1;
  }
  return 0;
}
