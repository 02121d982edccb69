// FaultInjection (fault_injection.h).
#include "runtime/model/fault_injection.h"

#include <chrono>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "kernels/common/check.h"

namespace moe::runtime {

std::unique_ptr<FaultInjection> FaultInjection::from_env(int rank) {
  const char* env = std::getenv("MOE_EP_FAULT");
  if (env == nullptr || *env == '\0') return nullptr;
  int fault_rank = -1, layer = -1;
  std::string mode = "throw";
  std::stringstream ss(env);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const auto eq = item.find('=');
    MOE_CHECK_AS("config", eq != std::string::npos,
                 "MOE_EP_FAULT='{}': expected rank=R,layer=L[,mode=throw|hang]", env);
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    try {
      if (key == "rank")
        fault_rank = std::stoi(value);
      else if (key == "layer")
        layer = std::stoi(value);
      else if (key == "mode")
        mode = value;
      else
        MOE_THROW("config", "MOE_EP_FAULT='{}': unknown key '{}'", env, key);
    } catch (const std::logic_error&) {
      MOE_THROW("config", "MOE_EP_FAULT='{}': '{}' is not a number", env, value);
    }
  }
  MOE_CHECK_AS("config", mode == "throw" || mode == "hang",
               "MOE_EP_FAULT='{}': mode must be throw or hang", env);
  if (fault_rank != rank || layer < 0) return nullptr;
  auto f = std::make_unique<FaultInjection>();
  f->layer_ = layer;
  f->hang_ = mode == "hang";
  return f;
}

void FaultInjection::route(int64_t /*step*/, int layer, std::span<const TokenId> /*tokens*/,
                           std::span<int32_t> /*ids*/, std::span<float> /*weights*/) {
  if (layer != layer_) return;
  if (hang_) {
    // A stuck rank: the others must time out in the next collective and end the job.
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  MOE_THROW("fault", "injected fault at layer {} (MOE_EP_FAULT)", layer);
}

}  // namespace moe::runtime
