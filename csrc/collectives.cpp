// Collective communication between ranks, behind a C ABI for `src/distributed.rs`:
// libtorch's own c10d `ProcessGroupGloo` (compiled into the wheel's libtorch_cpu) with a c10d
// `TCPStore` rendezvous on MASTER_ADDR:MASTER_PORT, as `torch.distributed` does with the `gloo`
// backend. Kept apart from native.cpp: these headers are slow to compile.
//
// Errors come back as malloc'ed messages (NULL on success): guarded.hpp.

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "guarded.hpp"

namespace {

struct Group {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  int rank;
  int size;
};

using rlhf::guarded;

}  // namespace

extern "C" {

// Joins the group of `size` ranks: rank 0 hosts the store on `host:port`, every rank connects
// to it and then to every other rank. `timeout_s` bounds the rendezvous and every collective.
// `interface`, when not NULL, names the network interface Gloo uses (GLOO_SOCKET_IFNAME).
char* rlhf_group_new(const char* host, int port, int rank, int size, double timeout_s, const char* interface,
                     void** handle) {
  return guarded([&] {
    auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(port);
    store_options.isServer = rank == 0;
    store_options.numWorkers = size;
    store_options.waitWorkers = true;
    store_options.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(host, store_options);
    auto options = c10d::ProcessGroupGloo::Options::create();
    options->timeout = timeout;
    options->devices.push_back(interface != nullptr
                                   ? c10d::ProcessGroupGloo::createDeviceForInterface(interface)
                                   : c10d::ProcessGroupGloo::createDefaultDevice());
    auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, options);
    *handle = new Group{store, group, rank, size};
  });
}

void rlhf_group_free(void* handle) { delete static_cast<Group*>(handle); }

// Sums `tensor` over all ranks, in place.
char* rlhf_group_all_reduce_sum(void* handle, at::Tensor* tensor) {
  return guarded([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions options;
    options.reduceOp = c10d::ReduceOp::SUM;
    static_cast<Group*>(handle)->group->allreduce(tensors, options)->wait();
  });
}

// Overwrites `tensor` on every rank with rank `root`'s.
char* rlhf_group_broadcast(void* handle, at::Tensor* tensor, int root) {
  return guarded([&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    static_cast<Group*>(handle)->group->broadcast(tensors, options)->wait();
  });
}

// Every rank's `input` (all of one shape) into `outputs[0..size)`, new handles owned by the caller.
char* rlhf_group_all_gather(void* handle, at::Tensor* input, at::Tensor** outputs) {
  return guarded([&] {
    auto* group = static_cast<Group*>(handle);
    std::vector<std::vector<at::Tensor>> gathered(1);
    for (int i = 0; i < group->size; ++i) gathered[0].push_back(at::empty_like(*input));
    std::vector<at::Tensor> inputs{*input};
    group->group->allgather(gathered, inputs)->wait();
    for (int i = 0; i < group->size; ++i) outputs[i] = new at::Tensor(gathered[0][i]);
  });
}

char* rlhf_group_barrier(void* handle) {
  return guarded([&] { static_cast<Group*>(handle)->group->barrier()->wait(); });
}

// After a failed collective: which ranks still answer. Each surviving rank marks itself in the
// store under `round` and waits up to `wait_s` for the others' marks; `alive[r]` is set to 1 for
// each rank seen. Fails when the store itself is gone (its host, rank 0, is lost).
char* rlhf_group_alive_ranks(void* handle, int round, double wait_s, int* alive) {
  return guarded([&] {
    auto* group = static_cast<Group*>(handle);
    auto key = [&](int rank) { return "rlhf/alive/" + std::to_string(round) + "/" + std::to_string(rank); };
    group->store->set(key(group->rank), std::vector<uint8_t>{1});
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(wait_s * 1000));
    while (true) {
      int seen = 0;
      for (int r = 0; r < group->size; ++r) {
        alive[r] = group->store->check({key(r)}) ? 1 : 0;
        seen += alive[r];
      }
      if (seen == group->size || std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
}

}  // extern "C"
