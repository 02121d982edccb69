// Typed YAML access with file/key/line errors. yaml-cpp's own exceptions never escape: every
// failure becomes one moe::Error("config") naming where it happened.
#include "parallel/yaml_util.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/common/check.h"

namespace moe::parallel::yaml {
namespace {

std::string join_key(const std::string& key_path, const std::string& key) {
  return key_path.empty() ? key : key_path;
}

bool parse_int(const std::string& s, int64_t* out) {
  if (s.empty()) return false;
  size_t pos = 0;
  try {
    long long v = std::stoll(s, &pos, 0);
    if (pos != s.size()) return false;
    *out = v;
    return true;
  } catch (...) {
    return false;
  }
}

bool parse_double(const std::string& s, double* out) {
  if (s.empty()) return false;
  size_t pos = 0;
  try {
    double v = std::stod(s, &pos);
    if (pos != s.size()) return false;
    *out = v;
    return true;
  } catch (...) {
    return false;
  }
}

}  // namespace

int line_of(const YAML::Node& node) {
  if (!node.IsDefined()) return 0;
  auto mark = node.Mark();
  return mark.line >= 0 ? mark.line + 1 : 0;
}

void fail(const Doc& doc, const YAML::Node& at, const std::string& key,
          const std::string& message) {
  int line = line_of(at);
  if (line > 0) MOE_THROW("config", "{}:{}: key '{}': {}", doc.path, line, key, message);
  MOE_THROW("config", "{}: key '{}': {}", doc.path, key, message);
}

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOE_CHECK_AS("config", in.good(), "{}: cannot be read", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int line_at_byte(const std::string& text, size_t byte) {
  byte = std::min(byte, text.size());
  return 1 + static_cast<int>(
                 std::count(text.begin(), text.begin() + static_cast<ptrdiff_t>(byte), '\n'));
}

// YAML accepts more than JSON (`"k": ,` is a null there), so a .json file is first checked by
// a strict JSON parser, whose error carries the byte where the syntax breaks.
void check_json_syntax(const std::string& path, const std::string& text) {
  try {
    const nlohmann::json root = nlohmann::json::parse(text);
    MOE_CHECK_AS("config", root.is_object(), "{}: expected a JSON object at the top level, got {}",
                 path, root.type_name());
  } catch (const nlohmann::json::parse_error& e) {
    // what() is "[json.exception.parse_error.101] parse error at line L, column C: ..."; keep
    // the part after the tag and lead with our own file:line.
    std::string what = e.what();
    const auto tag_end = what.find("] ");
    if (tag_end != std::string::npos) what = what.substr(tag_end + 2);
    MOE_THROW("config", "{}:{}: not valid JSON: {}", path,
              line_at_byte(text, e.byte > 0 ? e.byte - 1 : 0), what);
  }
}

}  // namespace

Doc load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  MOE_CHECK_AS("config", fs::exists(path, ec), "{}: file not found", path);
  MOE_CHECK_AS("config", !fs::is_directory(path, ec), "{}: is a directory, expected a file", path);
  const std::string text = read_text(path);
  const bool json = fs::path(path).extension() == ".json";
  if (json) check_json_syntax(path, text);
  Doc doc{path, {}};
  try {
    doc.root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    MOE_THROW("config", "{}:{}: not valid {}: {}", path, e.mark.line + 1, json ? "JSON" : "YAML",
              e.msg);
  } catch (const YAML::Exception& e) {
    MOE_THROW("config", "{}: not valid {}: {}", path, json ? "JSON" : "YAML", e.msg);
  }
  MOE_CHECK_AS("config", doc.root.IsMap(), "{}: expected a YAML mapping of keys at the top level",
               path);
  return doc;
}

namespace {

// A quoted scalar ("2048") is a string, not a number or a boolean (as in JSON).
bool is_quoted(const YAML::Node& node) {
  return node.Tag() == "!";
}

// How a node that has the wrong type is named in a message.
std::string describe(const YAML::Node& node) {
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  if (!node.IsScalar()) return "nothing";
  return is_quoted(node) ? fmt::format("string \"{}\"", node.Scalar())
                         : fmt::format("'{}'", node.Scalar());
}

}  // namespace

template <>
int64_t as<int64_t>(const Doc& doc, const YAML::Node& node, const std::string& key_path) {
  int64_t v = 0;
  if (!node.IsScalar() || is_quoted(node) || !parse_int(node.Scalar(), &v)) {
    fail(doc, node, key_path, fmt::format("expected an integer, got {}", describe(node)));
  }
  return v;
}

template <>
double as<double>(const Doc& doc, const YAML::Node& node, const std::string& key_path) {
  double v = 0;
  if (!node.IsScalar() || is_quoted(node) || !parse_double(node.Scalar(), &v) ||
      !std::isfinite(v)) {
    fail(doc, node, key_path, fmt::format("expected a finite number, got {}", describe(node)));
  }
  return v;
}

template <>
bool as<bool>(const Doc& doc, const YAML::Node& node, const std::string& key_path) {
  if (node.IsScalar() && !is_quoted(node)) {
    const std::string& s = node.Scalar();
    if (s == "true" || s == "True" || s == "yes") return true;
    if (s == "false" || s == "False" || s == "no") return false;
  }
  fail(doc, node, key_path, fmt::format("expected true or false, got {}", describe(node)));
}

template <>
std::string as<std::string>(const Doc& doc, const YAML::Node& node, const std::string& key_path) {
  if (!node.IsScalar()) {
    fail(doc, node, key_path, fmt::format("expected a string, got {}", describe(node)));
  }
  return node.Scalar();
}

template <class T>
std::optional<T> optional(const Doc& doc, const YAML::Node& map, const std::string& key,
                          const std::string& key_path) {
  if (!map.IsMap()) fail(doc, map, key_path.empty() ? key : key_path, "expected a mapping");
  YAML::Node node = map[key];
  if (!node.IsDefined() || node.IsNull()) return std::nullopt;
  return as<T>(doc, node, join_key(key_path, key));
}

template <class T>
T require(const Doc& doc, const YAML::Node& map, const std::string& key,
          const std::string& key_path) {
  if (!map.IsMap()) fail(doc, map, join_key(key_path, key), "expected a mapping");
  YAML::Node node = map[key];
  if (!node.IsDefined() || node.IsNull())
    fail(doc, map, join_key(key_path, key), "missing required key");
  return as<T>(doc, node, join_key(key_path, key));
}

template std::optional<int64_t> optional<int64_t>(const Doc&, const YAML::Node&, const std::string&,
                                                  const std::string&);
template std::optional<double> optional<double>(const Doc&, const YAML::Node&, const std::string&,
                                                const std::string&);
template std::optional<bool> optional<bool>(const Doc&, const YAML::Node&, const std::string&,
                                            const std::string&);
template std::optional<std::string> optional<std::string>(const Doc&, const YAML::Node&,
                                                          const std::string&, const std::string&);
template int64_t require<int64_t>(const Doc&, const YAML::Node&, const std::string&,
                                  const std::string&);
template double require<double>(const Doc&, const YAML::Node&, const std::string&,
                                const std::string&);
template bool require<bool>(const Doc&, const YAML::Node&, const std::string&, const std::string&);
template std::string require<std::string>(const Doc&, const YAML::Node&, const std::string&,
                                          const std::string&);

std::vector<int64_t> int_list(const Doc& doc, const YAML::Node& node, const std::string& key_path) {
  if (!node.IsSequence()) {
    fail(doc, node, key_path, fmt::format("expected a list of integers, got {}", describe(node)));
  }
  std::vector<int64_t> out;
  out.reserve(node.size());
  for (size_t i = 0; i < node.size(); ++i) {
    out.push_back(as<int64_t>(doc, node[i], fmt::format("{}[{}]", key_path, i)));
  }
  return out;
}

void reject_unknown_keys(const Doc& doc, const YAML::Node& map,
                         const std::vector<std::string>& allowed, const std::string& where) {
  if (!map.IsMap()) return;
  for (auto it = map.begin(); it != map.end(); ++it) {
    std::string key = it->first.IsScalar() ? it->first.Scalar() : "?";
    bool known = false;
    for (const auto& a : allowed) known = known || a == key;
    if (!known) {
      std::string full = where.empty() ? key : where + "." + key;
      fail(doc, it->first, full,
           fmt::format("unknown key (allowed: {})", fmt::join(allowed, ", ")));
    }
  }
}

void apply_override(Doc& doc, const std::string& assignment) {
  auto eq = assignment.find('=');
  MOE_CHECK_AS("config", eq != std::string::npos && eq > 0,
               "--set '{}': expected key=value (for example workload.prompt_len=64)", assignment);
  std::string key = assignment.substr(0, eq);
  std::string value = assignment.substr(eq + 1);
  YAML::Node parsed;
  try {
    parsed = YAML::Load(value);
  } catch (const YAML::Exception& e) {
    MOE_THROW("config", "--set '{}': value is not valid YAML: {}", assignment, e.msg);
  }
  // Walk/create the dotted path with node copies (yaml-cpp nodes are handles; operator[] on a
  // non-const node creates the key).
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  YAML::Node node = doc.root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node child = node[parts[i]];
    if (!child.IsDefined() || child.IsNull()) {
      node[parts[i]] = YAML::Node(YAML::NodeType::Map);
      child = node[parts[i]];
    }
    MOE_CHECK_AS("config", child.IsMap(), "--set '{}': '{}' is not a mapping in {}", assignment,
                 parts[i], doc.path);
    node.reset(child);
  }
  node[parts.back()] = parsed;
}

}  // namespace moe::parallel::yaml
