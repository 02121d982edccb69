// Worker of the rebalancing test (test_routing_cli.cpp runs it under mpirun): the tiny model on
// N ranks prefills a fixed batch, moves its experts to a replicated placement (Model::
// apply_placement), prefills again, moves them back to contiguous, prefills again; rank 0 writes
// the three logits as before.npy, replicated.npy, back.npy and the experts moved as moved.json.
#include <fmt/format.h>

#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/backend.h"
#include "kernels/common/check.h"
#include "parallel/communicator.h"
#include "parallel/placement.h"
#include "parallel/placement_strategies.h"
#include "runtime/io/config.h"
#include "runtime/io/npy.h"
#include "runtime/io/weights.h"
#include "runtime/model/engine.h"
#include "runtime/model/model.h"

namespace {

using namespace moe;

parallel::Placement replicated(const runtime::ModelConfig& c, int num_ranks) {
  // A skewed load so the replicas go to a few hot experts, on other ranks than their owners.
  std::vector<double> load(static_cast<size_t>(c.num_experts));
  for (size_t e = 0; e < load.size(); ++e)
    load[e] = 1.0 / (1.0 + static_cast<double>((e * 37) % load.size()));
  parallel::PlacementSpec spec;
  spec.strategy = "explicit";
  spec.source = "rebalance worker";
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!c.layer_is_moe(l)) continue;
    spec.layers.emplace_back(static_cast<int>(l),
                             num_ranks > 1 ? parallel::replicated_placement(load, num_ranks, 8)
                                           : parallel::load_balanced_placement(load, num_ranks));
  }
  return parallel::Placement::build(spec, c.moe_layers(), static_cast<int>(c.num_experts),
                                    num_ranks);
}

void run(const std::string& model_yaml, const std::string& out) {
  parallel::CommOptions copts;
  copts.timeout_s = 60;
  auto comm = parallel::make_mpi_communicator(copts);
  const int N = comm->size();
  const runtime::ModelConfig config = runtime::load_model_config(model_yaml);
  auto weights = runtime::make_synthetic_weights(config, config.seed);
  auto backend = kernels::make_backend("cpu", comm->local_rank());
  const auto contiguous = parallel::Placement::build(parallel::PlacementSpec{}, config.moe_layers(),
                                                     static_cast<int>(config.num_experts), N);
  const runtime::TokenBatch batch = {
      {1, 2, 3, 4, 5, 6, 7, 8, 9}, {10, 11}, {12, 13, 14, 15, 16, 17}, {18}, {19, 20, 21, 22}};
  runtime::Model model(config, contiguous, *comm, *backend, *weights,
                       runtime::Engine::slots_needed(static_cast<int64_t>(batch.size()), N), 9);
  runtime::Engine engine(model, *comm);
  nlohmann::json moved = nlohmann::json::array();
  const auto forward = [&](const std::string& name) {
    const runtime::ForwardOutput f = engine.forward(batch);
    if (comm->rank() == 0) runtime::write_npy_f32(out + "/" + name + ".npy", f.shape, f.logits);
  };
  const auto apply = [&](const parallel::Placement& p) {
    const runtime::PlacementChange c = model.apply_placement(p);
    std::vector<int64_t> v{c.experts_received, c.bytes_received, c.experts_kept};
    comm->all_reduce<int64_t>(v, parallel::ReduceOp::kSum);
    moved.push_back({{"experts_received", v[0]}, {"bytes_received", v[1]}, {"experts_kept", v[2]}});
  };
  forward("before");
  apply(replicated(config, N));
  forward("replicated");
  apply(contiguous);
  forward("back");
  if (comm->rank() == 0) std::ofstream(out + "/moved.json") << moved.dump();
  comm->barrier();
  comm->shutdown();
}

}  // namespace

int main(int argc, char** argv) {
  return moe::bench::mpi_main(argc, argv, "rebalance worker", [](int n, char** args) {
    MOE_CHECK_AS("test", n == 3, "usage: rebalance_worker MODEL.yaml OUT_DIR");
    run(args[1], args[2]);
    return 0;
  });
}
