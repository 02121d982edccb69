// Worker of tests/gpu/test_cuda_routing.cpp: one process, one rank, the same model on the CPU
// backend (fp32, the reference) and on the CUDA backend (bf16), with the routing of the GPU run
// either its own (free) or forced to the CPU run's through a RoutingHook (forced). A bf16
// rounding that flips a near-tie in some router changes that token's hidden state by far more
// than the rounding itself, so only the forced comparison can be held to a bf16 tolerance; the
// free one is reported. Writes per sequence i: cpu_i.npy, gpu_forced_i.npy, gpu_free_i.npy
// (float32 [len, vocab]) and routing.json (positions whose top-k set agrees in every layer).
//
//   cuda_routing_worker --model M [--weights DIR] --tokens "1,2,3;4,5" --out DIR
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
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
#include "runtime/model/routing.h"

namespace moe::test {
namespace {

// Top-k of every (layer, sequence, position) a run routed.
struct RoutingTable {
  struct Choice {
    std::vector<int32_t> ids;
    std::vector<float> weights;
  };
  std::map<std::tuple<int, int64_t, int64_t>, Choice> at;
};

// Records the router's choice (record) or overwrites it with a recorded one (replay).
class TableHook final : public runtime::RoutingHook {
 public:
  TableHook(RoutingTable& table, bool replay) : table_(table), replay_(replay) {}
  void route(int64_t /*step*/, int layer, std::span<const runtime::TokenId> tokens,
             std::span<int32_t> ids, std::span<float> weights) override {
    const size_t k = tokens.empty() ? 0 : ids.size() / tokens.size();
    for (size_t t = 0; t < tokens.size(); ++t) {
      const auto key = std::make_tuple(layer, tokens[t].sequence, tokens[t].position);
      if (replay_) {
        const RoutingTable::Choice& c = table_.at.at(key);
        std::copy(c.ids.begin(), c.ids.end(), ids.begin() + static_cast<std::ptrdiff_t>(t * k));
        std::copy(c.weights.begin(), c.weights.end(),
                  weights.begin() + static_cast<std::ptrdiff_t>(t * k));
      } else {
        RoutingTable::Choice& c = table_.at[key];
        c.ids.assign(ids.begin() + static_cast<std::ptrdiff_t>(t * k),
                     ids.begin() + static_cast<std::ptrdiff_t>((t + 1) * k));
        c.weights.assign(weights.begin() + static_cast<std::ptrdiff_t>(t * k),
                         weights.begin() + static_cast<std::ptrdiff_t>((t + 1) * k));
      }
    }
  }

 private:
  RoutingTable& table_;
  bool replay_;
};

std::vector<std::vector<int32_t>> parse_tokens(const std::string& text) {
  std::vector<std::vector<int32_t>> seqs;
  std::stringstream all(text);
  for (std::string seq; std::getline(all, seq, ';');) {
    std::vector<int32_t> ids;
    std::stringstream one(seq);
    for (std::string tok; std::getline(one, tok, ',');) ids.push_back(std::stoi(tok));
    MOE_CHECK_AS("input", !ids.empty(), "empty sequence in --tokens '{}'", text);
    seqs.push_back(std::move(ids));
  }
  return seqs;
}

struct Options {
  std::string model, weights, tokens, out;
  std::string device = "cuda";  // cuda | cpu-bf16 (the CPU's bf16 mode: rehearses this worker)
};

// Every sequence in one step (sequence i in cache slot i); logits of every row, split per
// sequence as [len, vocab].
std::vector<std::vector<float>> forward(const Options& o, const runtime::ModelConfig& config,
                                        const parallel::Placement& placement,
                                        parallel::Communicator& comm, kernels::Backend& backend,
                                        const std::vector<std::vector<int32_t>>& seqs,
                                        runtime::RoutingHook* hook) {
  auto weights = o.weights.empty() ? runtime::make_synthetic_weights(config, config.seed)
                                   : runtime::open_checkpoint(o.weights, config);
  int64_t max_len = 0;
  for (const auto& s : seqs) max_len = std::max<int64_t>(max_len, static_cast<int64_t>(s.size()));
  runtime::Model model(config, placement, comm, backend, *weights,
                       static_cast<int64_t>(seqs.size()), max_len);
  if (hook != nullptr) model.instrumentation().set_routing_hooks({hook});
  std::vector<runtime::SeqStep> batch;
  std::vector<int64_t> rows;
  for (size_t i = 0; i < seqs.size(); ++i) {
    runtime::SeqStep q;
    q.sequence = static_cast<int64_t>(i);
    q.cache_slot = static_cast<int64_t>(i);
    q.tokens = seqs[i];
    for (size_t p = 0; p < seqs[i].size(); ++p) rows.push_back(static_cast<int64_t>(rows.size()));
    batch.push_back(std::move(q));
  }
  const runtime::StepResult r = model.step(batch, rows);
  const size_t V = static_cast<size_t>(config.vocab_size);
  std::vector<std::vector<float>> out;
  size_t row = 0;
  for (const auto& s : seqs) {
    out.emplace_back(r.logits.begin() + static_cast<std::ptrdiff_t>(row * V),
                     r.logits.begin() + static_cast<std::ptrdiff_t>((row + s.size()) * V));
    row += s.size();
  }
  return out;
}

int run(int argc, char** argv) {
  Options o;
  CLI::App app{"GPU vs CPU forward with routing free and forced equal (test worker)"};
  app.add_option("--model", o.model, "Model YAML or HF checkpoint directory")->required();
  app.add_option("--weights", o.weights, "Checkpoint directory backing a YAML model");
  app.add_option("--tokens", o.tokens, "Sequences: ids separated by ',', sequences by ';'")
      ->required();
  app.add_option("--out", o.out, "Output directory")->required();
  app.add_option("--device", o.device,
                 "Backend of the compared runs: cuda, or cpu-bf16 (CPU backend in bf16 mode, to "
                 "exercise this worker without a GPU)")
      ->check(CLI::IsMember({"cuda", "cpu-bf16"}));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (o.weights.empty() && std::filesystem::is_directory(o.model)) o.weights = o.model;
  const auto seqs = parse_tokens(o.tokens);
  const runtime::ModelConfig config = runtime::load_model_config(o.model);
  auto comm = parallel::make_mpi_communicator({});
  MOE_CHECK(comm->size() == 1, "cuda_routing_worker runs on one rank, got {}", comm->size());
  const parallel::Placement placement =
      parallel::Placement::build({}, config.moe_layers(), static_cast<int>(config.num_experts), 1);

  auto cpu = kernels::make_backend("cpu", 0);
  kernels::BackendOptions device;
  device.kind = o.device == "cuda" ? kernels::BackendKind::kCuda : kernels::BackendKind::kCpu;
  if (o.device == "cpu-bf16") device.compute_dtype = kernels::ComputeDtype::kBF16;
  auto gpu = kernels::make_backend(device);
  RoutingTable cpu_routing, gpu_routing;
  TableHook record_cpu(cpu_routing, false), record_gpu(gpu_routing, false),
      replay_cpu(cpu_routing, true);
  const auto ref = forward(o, config, placement, *comm, *cpu, seqs, &record_cpu);
  const auto free_run = forward(o, config, placement, *comm, *gpu, seqs, &record_gpu);
  const auto forced = forward(o, config, placement, *comm, *gpu, seqs, &replay_cpu);

  std::filesystem::create_directories(o.out);
  const int64_t V = config.vocab_size;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const std::vector<int64_t> shape = {static_cast<int64_t>(seqs[i].size()), V};
    const auto path = [&](const char* name) {
      return (std::filesystem::path(o.out) / fmt::format("{}_{}.npy", name, i)).string();
    };
    runtime::write_npy_f32(path("cpu"), shape, ref[i]);
    runtime::write_npy_f32(path("gpu_free"), shape, free_run[i]);
    runtime::write_npy_f32(path("gpu_forced"), shape, forced[i]);
  }
  // Positions whose top-k set (order aside) agrees between the free GPU run and the CPU run in
  // every MoE layer.
  std::map<std::pair<int64_t, int64_t>, bool> agrees;
  for (const auto& [key, choice] : cpu_routing.at) {
    const auto pos = std::make_pair(std::get<1>(key), std::get<2>(key));
    auto a = choice.ids, b = gpu_routing.at.at(key).ids;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    auto [it, inserted] = agrees.emplace(pos, true);
    it->second = it->second && a == b;
  }
  int64_t agreeing = 0;
  for (const auto& [pos, same] : agrees) agreeing += same ? 1 : 0;
  nlohmann::json j;
  j["positions"] = static_cast<int64_t>(agrees.size());
  j["routing_agreeing_positions"] = agreeing;
  std::ofstream(std::filesystem::path(o.out) / "routing.json") << j.dump(2) << "\n";
  comm->shutdown();
  return 0;
}

}  // namespace
}  // namespace moe::test

int main(int argc, char** argv) {
  return moe::bench::mpi_main(argc, argv, "cuda_routing_worker", moe::test::run);
}
