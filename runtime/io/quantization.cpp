// WeightQuantization (config.h): which tensors a block-quantized FP8 config makes e4m3. Its
// parsing is config.cpp's (the shared key reader).
#include <string>
#include <vector>

#include "runtime/io/config.h"

namespace moe::runtime {
namespace {

std::vector<std::string> dotted_parts(const std::string& name) {
  std::vector<std::string> parts;
  size_t at = 0;
  while (true) {
    const size_t dot = name.find('.', at);
    parts.push_back(name.substr(at, dot == std::string::npos ? std::string::npos : dot - at));
    if (dot == std::string::npos) return parts;
    at = dot + 1;
  }
}

// `entry`'s parts appear as a contiguous run of `module`'s parts ('*' matches any one part).
bool names_module(const std::string& entry, const std::vector<std::string>& module) {
  const std::vector<std::string> want = dotted_parts(entry);
  for (size_t start = 0; start + want.size() <= module.size(); ++start) {
    bool match = true;
    for (size_t i = 0; i < want.size() && match; ++i) {
      match = want[i] == "*" || want[i] == module[start + i];
    }
    if (match) return true;
  }
  return false;
}

}  // namespace

bool WeightQuantization::quantizes(const std::string& name) const {
  if (!fp8 || name.rfind("model.layers.", 0) != 0) return false;
  const bool linear = name.ends_with("_proj.weight") || name.ends_with("_proj") ||
                      name.ends_with(".mlp.gate.weight");
  if (!linear) return false;
  const std::string module = name.ends_with(".weight")
                                 ? name.substr(0, name.size() - std::string(".weight").size())
                                 : name;
  const std::vector<std::string> parts = dotted_parts(module);
  for (const std::string& entry : modules_to_not_convert) {
    if (names_module(entry, parts)) return false;
  }
  return true;
}

WeightQuantization WeightQuantization::published_fp8() {
  WeightQuantization q;
  q.fp8 = true;
  q.modules_to_not_convert = {"lm_head", "mlp.gate"};
  return q;
}

}  // namespace moe::runtime
