// Whole files: written so that they appear whole or not at all (write beside, flush, rename), and
// read whole (as text, or as JSON) with errors that name the file.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <stdexcept>
#include <utility>
#include <array>
#include <cstdint>
#include <string>
#include <type_traits>

namespace ditto {

// Calls `write` with a stream to a temporary file next to `path`, then renames it onto `path`.
// On any failure the temporary file is removed and an Error names `path`.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);

// JSON that ditto reads (configs, job lines, safetensors headers, schedules) nests at most this deep:
// deeper input is refused while it is parsed, before any deep structure exists to recurse over.
constexpr int kMaxJsonDepth = 64;

// `input` (a string, a stream, or a pair of iterators) parsed as BasicJson (nlohmann::json or
// ordered_json) under kMaxJsonDepth; malformed or too deep input throws a std::exception saying why
// (the caller names the source).
// A syntax error names the byte it stopped at, never the text there (the input could be any file).
template <class BasicJson, class... Input>
BasicJson parse_json(Input&&... input) {
  try {
    return BasicJson::parse(std::forward<Input>(input)..., [](int depth, typename BasicJson::parse_event_t, BasicJson&) {
      if (depth > kMaxJsonDepth)
        throw std::invalid_argument("JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
      return true;
    });
  } catch (const typename BasicJson::parse_error& e) {
    throw std::invalid_argument("not JSON: a syntax error at byte " + std::to_string(e.byte));
  }
}

// A field of a configuration read strictly into `out` (absent or null: `out` unchanged; `where` names
// the field in errors): an integer must be a JSON integer within 0 .. 2^24 (64.7, 1e9 or 2^32 + 64
// are errors, not 64), a bool a JSON bool; other types as nlohmann converts them.
constexpr int64_t kMaxConfigInteger = int64_t{1} << 24;
template <class T>
void read_config_field(const nlohmann::json& j, const char* key, T& out, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return;
  const nlohmann::json& v = j[key];
  try {
    if constexpr (std::is_same_v<T, bool>) {
      if (!v.is_boolean()) throw std::invalid_argument("must be true or false, got " + v.dump());
      out = v.get<bool>();
    } else if constexpr (std::is_integral_v<T>) {
      if (!v.is_number_integer()) throw std::invalid_argument("must be an integer, got " + v.dump());
      const int64_t n = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(kMaxConfigInteger)
                            ? kMaxConfigInteger + 1
                            : v.get<int64_t>();
      if (n < 0 || n > kMaxConfigInteger)
        throw std::invalid_argument("must be an integer in 0 .. " + std::to_string(kMaxConfigInteger) + ", got " + v.dump());
      out = static_cast<T>(n);
    } else {
      out = v.get<T>();
    }
  } catch (const std::exception& e) {
    throw std::invalid_argument(where + ", field '" + key + "': " + e.what());
  }
}

// A list of three integers ([t, h, w] sizes), each read as above.
inline void read_config_field(const nlohmann::json& j, const char* key, std::array<int, 3>& out, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return;
  if (!j[key].is_array() || j[key].size() != 3)
    throw std::invalid_argument(where + ", field '" + key + "': expected [t, h, w], got " + j[key].dump());
  for (size_t i = 0; i < 3; ++i) read_config_field(nlohmann::json{{key, j[key][i]}}, key, out[i], where);
}

// Whether something exists at `path` (a stat, which never opens it: a FIFO does not block).
bool path_exists(const std::string& path);

// The file's bytes; an Error "cannot read 'PATH'" when it cannot be opened.
std::string read_text_file(const std::string& path);
// The file parsed as JSON; Errors "cannot open WHAT 'PATH'" and "'PATH': malformed JSON: ...".
nlohmann::json read_json_file(const std::string& path, const std::string& what);

}  // namespace ditto
