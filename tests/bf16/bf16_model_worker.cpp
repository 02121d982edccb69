// Worker of the bf16 whole-model tests (test_bf16_model.cpp runs it under mpirun): builds the
// model of one HF fixture in-process on every rank with the CPU backend in the given compute
// dtype with a RoutingRecorder as its routing hook, prefills every prompt (sequence i on rank i mod
// N, as `moe-ep forward` places them) and writes, per sequence i, logits_<i>.npy [len, vocab] and
// topk_<i>.npy [moe_layers, len, top_k] (expert ids as float32) into the output directory.
#include <fmt/format.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/backend.h"
#include "kernels/common/check.h"
#include "parallel/communicator.h"
#include "parallel/placement.h"
#include "runtime/io/config.h"
#include "runtime/io/npy.h"
#include "runtime/io/weights.h"
#include "runtime/model/model.h"
#include "tests/common/routing_compare.h"

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  MOE_CHECK_AS("test", in.good(), "cannot read {}", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string arg(int argc, char** argv, const std::string& key) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (key == argv[i]) return argv[i + 1];
  }
  MOE_THROW("test",
            "bf16 model worker: missing {} (usage: --fixture DIR --dtype fp32|bf16 --out DIR)",
            key);
}

int run(int argc, char** argv) {
  using namespace moe;
  const std::string fixture = arg(argc, argv, "--fixture");
  const std::string out = arg(argc, argv, "--out");
  const kernels::ComputeDtype dtype = kernels::parse_compute_dtype(arg(argc, argv, "--dtype"));
  parallel::CommOptions copts;
  copts.timeout_s = 60;
  auto comm = parallel::make_mpi_communicator(copts);
  const int N = comm->size(), rank = comm->rank();

  const auto prompts = nlohmann::json::parse(read_text(fixture + "/prompts.json"))["prompts"]
                           .get<std::vector<std::vector<int32_t>>>();
  const runtime::ModelConfig config = runtime::load_model_config(fixture);
  auto weights = runtime::open_checkpoint(fixture, config);
  const auto placement = parallel::Placement::build(parallel::PlacementSpec{}, config.moe_layers(),
                                                    static_cast<int>(config.num_experts), N);
  kernels::BackendOptions bopts;
  bopts.compute_dtype = dtype;
  const std::unique_ptr<kernels::Backend> backend = kernels::make_backend(bopts);
  test::RoutingRecorder recorder;
  std::vector<size_t> mine;
  int64_t max_len = 1;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (static_cast<int>(i % N) == rank) mine.push_back(i);
    max_len = std::max<int64_t>(max_len, static_cast<int64_t>(prompts[i].size()));
  }
  auto model = std::make_unique<runtime::Model>(
      config, placement, *comm, *backend, *weights,
      std::max<int64_t>(1, static_cast<int64_t>(mine.size())), max_len);
  model->instrumentation().set_routing_hooks({&recorder});

  std::vector<runtime::SeqStep> seqs;
  std::vector<int64_t> rows;
  for (size_t j = 0; j < mine.size(); ++j) {
    runtime::SeqStep s;
    s.cache_slot = static_cast<int64_t>(j);
    s.past_len = 0;
    s.tokens = prompts[mine[j]];
    for (size_t t = 0; t < s.tokens.size(); ++t) rows.push_back(static_cast<int64_t>(rows.size()));
    seqs.push_back(std::move(s));
  }
  const runtime::StepResult result = model->step(seqs, rows);
  const int64_t V = config.vocab_size;
  const test::Routing& routing = recorder.routing();
  const int64_t L = static_cast<int64_t>(routing.layers.size()), k = routing.top_k;
  int64_t row = 0;
  for (size_t j = 0; j < mine.size(); ++j) {
    const int64_t len = static_cast<int64_t>(prompts[mine[j]].size());
    std::vector<float> logits(result.logits.begin() + row * V,
                              result.logits.begin() + (row + len) * V);
    runtime::write_npy_f32(fmt::format("{}/logits_{}.npy", out, mine[j]), {len, V}, logits);
    std::vector<float> ids;
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t i = (row)*k; i < (row + len) * k; ++i) ids.push_back(routing.layers[l][i]);
    }
    runtime::write_npy_f32(fmt::format("{}/topk_{}.npy", out, mine[j]), {L, len, k}, ids);
    row += len;
  }
  model.reset();
  comm->barrier();
  comm->shutdown();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return moe::bench::mpi_main(argc, argv, "bf16 model worker", run);
}
