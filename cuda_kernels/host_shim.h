// Host build of CUDA kernel sources, for checking their logic on a CPU with g++.
//
// Include this before a .cu file. It defines the CUDA qualifiers away and runs a launch as a
// sequential simulation: blocks one after another; within a block every thread is a coroutine
// (ucontext) that runs until it reaches __syncthreads() or ends, so each barrier phase of every
// thread completes before any thread starts the next phase, as on the GPU. Atomics are plain
// read-modify-writes (only one coroutine runs at a time). Dynamic shared memory is one array
// declared `extern __shared__ double <name>[]` by the kernel and defined by WSVS_HOST_EXPORT,
// filled with NaN bytes before each block so that reads of unwritten shared memory show up.
#pragma once

#include <ucontext.h>

#include <cstddef>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __shared__
#define __forceinline__ inline
#define __restrict__ __restrict

struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

template <typename T>
inline T atomicAdd(T* address, T value) {
    const T old = *address;
    *address = old + value;
    return old;
}

namespace wsvs_host {

constexpr std::size_t kStackBytes = 64 * 1024;
enum class State { Ready, AtBarrier, Done };

struct Block {
    ucontext_t scheduler;
    std::vector<ucontext_t> contexts;
    std::vector<std::vector<char>> stacks;
    std::vector<State> states;
    std::vector<dim3> thread_ids;
    std::size_t current = 0;
    std::function<void()> body;
};

inline Block block;

inline void thread_main() {
    block.body();
    block.states[block.current] = State::Done;  // returns to uc_link, the scheduler
}

// Runs `body` as every thread of every block of the grid. Returns 0, or 1 when threads of a block
// disagree about a barrier (some ended while others wait at __syncthreads()).
inline int simulate(dim3 grid, dim3 threads, unsigned char* shared, std::size_t shared_bytes,
                    std::function<void()> body) {
    const std::size_t count = std::size_t(threads.x) * threads.y * threads.z;
    block.body = std::move(body);
    block.contexts.resize(count);
    block.stacks.resize(count);
    block.states.resize(count);
    block.thread_ids.resize(count);
    gridDim = grid;
    blockDim = threads;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                blockIdx = dim3{bx, by, bz};
                std::memset(shared, 0xff, shared_bytes);
                for (std::size_t t = 0; t < count; ++t) {
                    block.stacks[t].resize(kStackBytes);
                    ucontext_t& context = block.contexts[t];
                    getcontext(&context);
                    context.uc_stack.ss_sp = block.stacks[t].data();
                    context.uc_stack.ss_size = kStackBytes;
                    context.uc_link = &block.scheduler;
                    makecontext(&context, thread_main, 0);
                    block.states[t] = State::Ready;
                    block.thread_ids[t] = dim3{unsigned(t % threads.x), unsigned(t / threads.x % threads.y),
                                               unsigned(t / (std::size_t(threads.x) * threads.y))};
                }
                for (;;) {  // one pass per barrier phase
                    for (std::size_t t = 0; t < count; ++t) {
                        if (block.states[t] == State::Done) continue;
                        block.current = t;
                        block.states[t] = State::Ready;
                        threadIdx = block.thread_ids[t];
                        swapcontext(&block.scheduler, &block.contexts[t]);
                    }
                    std::size_t done = 0;
                    for (State state : block.states) done += state == State::Done;
                    if (done == count) break;
                    if (done != 0) return 1;
                }
            }
    return 0;
}

// Calls `kernel` with arguments unpacked from `params`, laid out as cuLaunchKernel's kernelParams.
template <typename... Args, std::size_t... I>
void call_with_params(void (*kernel)(Args...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<Args>*>(params[I])...);
}

template <typename... Args>
int launch(void (*kernel)(Args...), const unsigned int* grid, const unsigned int* threads, unsigned char* shared,
           std::size_t shared_capacity, std::size_t shared_bytes, void** params) {
    if (shared_bytes > shared_capacity) return 2;
    return simulate(dim3{grid[0], grid[1], grid[2]}, dim3{threads[0], threads[1], threads[2]}, shared, shared_bytes,
                    [&] { call_with_params(kernel, params, std::index_sequence_for<Args...>{}); });
}

}  // namespace wsvs_host

inline void __syncthreads() {
    using wsvs_host::block;
    block.states[block.current] = wsvs_host::State::AtBarrier;
    swapcontext(&block.contexts[block.current], &block.scheduler);
}

// Defines the kernels' dynamic shared array and exports
//   int wsvs_host_launch(const char* name, const unsigned grid[3], const unsigned block[3],
//                        size_t shared_bytes, void** params)
// returning 0 on success, 1 for a divergent barrier, 2 for too much shared memory, 3 for an unknown name.
#define WSVS_HOST_EXPORT(KERNELS, SHARED_NAME, SHARED_BYTES)                                                \
    alignas(16) double SHARED_NAME[(SHARED_BYTES) / sizeof(double)];                                         \
    extern "C" int wsvs_host_launch(const char* name, const unsigned int* grid, const unsigned int* threads,   \
                                    std::size_t shared_bytes, void** params) {                              \
        unsigned char* shared = reinterpret_cast<unsigned char*>(SHARED_NAME);                              \
        const std::size_t capacity = sizeof(SHARED_NAME);                                                    \
        KERNELS(WSVS_HOST_DISPATCH_ONE)                                                                      \
        return 3;                                                                                            \
    }
#define WSVS_HOST_DISPATCH_ONE(kernel)                                                                      \
    if (std::strcmp(name, #kernel) == 0)                                                                     \
        return wsvs_host::launch(kernel, grid, threads, shared, capacity, shared_bytes, params);
