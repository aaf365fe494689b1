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
#include <vector>
#include <cmath>

#include "model/error.h"

namespace ditto {

// Calls `write` with a stream to a temporary file next to `path`, then renames it onto `path`.
// On any failure the temporary file is removed and an Error names `path`. The temporary file is
// created (O_EXCL, O_NOFOLLOW) and renamed through one descriptor of the directory, which is synced
// after the rename.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);

// Directories ditto made for its own outputs in a directory others may write to (a render's
// .NAME.partial folders): while guarded, a file written into one opens it without following a link
// (a link swapped in for the folder is refused, not written through).
void guard_output_dir(const std::string& dir);
void unguard_output_dir(const std::string& dir);

// `path`'s directory opened (O_DIRECTORY; O_NOFOLLOW when it is guarded) for openat/renameat, and the
// file's name in it; an Error naming the directory when it cannot be opened or is a swapped-in link.
struct DirEntryRef {
  int dir_fd = -1;
  std::string dir, name;
  ~DirEntryRef();
};
void open_parent_dir(const std::string& path, DirEntryRef& out);

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
  } catch (const typename BasicJson::out_of_range&) {
    throw std::invalid_argument("not JSON ditto can read: a number beyond the range of a double");
  }
}

// The code point of the UTF-8 sequence at text[i] into *cp and its length in bytes, or 0 when the bytes
// there are not valid UTF-8 (truncated, overlong, a UTF-16 surrogate or past U+10FFFF).
size_t utf8_decode(const std::string& text, size_t i, uint32_t* cp);
// The offset of the first byte of `text` that is not part of valid UTF-8, or std::string::npos.
size_t first_invalid_utf8(const std::string& text);

// `j` as text (indent < 0: one line). Strings that are not UTF-8 (a path or name made of other bytes)
// are written with U+FFFD in place of the bad bytes, where nlohmann's dump() would throw after the
// work was done.
template <class BasicJson>
std::string dump_json(const BasicJson& j, int indent = -1) {
  return j.dump(indent, ' ', false, BasicJson::error_handler_t::replace);
}

// A field of a configuration (or of a file ditto wrote: schedules, ratios) read strictly into `out`
// (absent or null: `out` unchanged; `where` names the file in errors, which name the field too): an
// integer must be a JSON integer within 0 .. 2^24 (64.7, 1e9 or 2^32 + 64 are errors, not 64), a
// floating-point value a finite number, a bool a JSON bool, a string a string, a vector a list of such.
constexpr int64_t kMaxConfigInteger = int64_t{1} << 24;

template <class T>
struct is_vector : std::false_type {};
template <class T>
struct is_vector<std::vector<T>> : std::true_type {};

// What a value is, for errors: a number as written, otherwise only its kind ("a string"): a file a job
// names may hold anything, and its text is never echoed.
inline std::string json_kind(const nlohmann::json& v) {
  if (v.is_number()) return v.dump();
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_array()) return "a list";
  if (v.is_object()) return "an object";
  return "null";
}

// One JSON value into `out` by the rules above; std::invalid_argument saying what is wrong.
template <class T>
void read_json_value(const nlohmann::json& v, T& out) {
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) throw std::invalid_argument("must be true or false, got " + json_kind(v));
    out = v.get<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer()) throw std::invalid_argument("must be an integer, got " + json_kind(v));
    const int64_t n = v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(kMaxConfigInteger)
                          ? kMaxConfigInteger + 1
                          : v.get<int64_t>();
    if (n < 0 || n > kMaxConfigInteger)
      throw std::invalid_argument("must be an integer in 0 .. " + std::to_string(kMaxConfigInteger) + ", got " + json_kind(v));
    out = static_cast<T>(n);
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number() || !std::isfinite(v.get<double>()))
      throw std::invalid_argument("must be a finite number, got " + json_kind(v));
    out = v.get<T>();
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) throw std::invalid_argument("must be a string, got " + json_kind(v));
    out = v.get<std::string>();
  } else if constexpr (std::is_same_v<T, std::vector<bool>>) {  // its items are proxies, not bool&
    if (!v.is_array()) throw std::invalid_argument("must be a list of true / false, got " + json_kind(v));
    T list;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_boolean())
        throw std::invalid_argument("item " + std::to_string(i) + " must be true or false, got " + json_kind(v[i]));
      list.push_back(v[i].get<bool>());
    }
    out = std::move(list);
  } else if constexpr (is_vector<T>::value) {
    if (!v.is_array()) throw std::invalid_argument("must be a list, got " + json_kind(v));
    T list(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      try {
        read_json_value(v[i], list[i]);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument("item " + std::to_string(i) + " " + e.what());
      }
    }
    out = std::move(list);
  } else {
    out = v.get<T>();
  }
}

template <class T>
void read_config_field(const nlohmann::json& j, const char* key, T& out, const std::string& where) {
  if (!j.is_object()) throw std::invalid_argument(where + ": not a JSON object");
  if (!j.contains(key) || j[key].is_null()) return;
  try {
    read_json_value(j[key], out);
  } catch (const std::exception& e) {
    throw std::invalid_argument(where + ", field '" + key + "': " + e.what());
  }
}

// The same for a field that must be present.
template <class T>
T required_field(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.is_object()) throw std::invalid_argument(where + ": not a JSON object");
  if (!j.contains(key) || j[key].is_null()) throw std::invalid_argument(where + ": field '" + key + "' is missing");
  T out{};
  read_config_field(j, key, out, where);
  return out;
}

// A list of three integers ([t, h, w] sizes), each read as above.
inline void read_config_field(const nlohmann::json& j, const char* key, std::array<int, 3>& out, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return;
  if (!j[key].is_array() || j[key].size() != 3)
    throw std::invalid_argument(where + ", field '" + key + "': expected [t, h, w], got " + json_kind(j[key]));
  for (size_t i = 0; i < 3; ++i) read_config_field(nlohmann::json{{key, j[key][i]}}, key, out[i], where);
}

// read_config_field (either overload), its complaint thrown as the ditto Error the config parsers throw.
template <class T>
void config_field(const nlohmann::json& j, const char* key, T& out, const std::string& where) {
  try {
    read_config_field(j, key, out, where);
  } catch (const std::invalid_argument& e) {
    throw Error(e.what());
  }
}

// strerror(err), with what it means for ditto's outputs when the filesystem refuses a write: full
// (ENOSPC), over quota (EDQUOT), over the process's file-size limit (EFBIG) or read-only (EROFS).
std::string write_error_text(int err);

// Whether something exists at `path` (a stat, which never opens it: a FIFO does not block).
bool path_exists(const std::string& path);
// Whether `path` is a directory (links followed).
bool is_directory(const std::string& path);

// The file's bytes; an Error "cannot read 'PATH'" when it cannot be opened, is not a regular file or
// is larger than `max_bytes` (configs, schedules, codebooks: 64 MiB; job files and manifests pass more).
constexpr size_t kMaxTextFileBytes = size_t{64} << 20;
std::string read_text_file(const std::string& path, size_t max_bytes = kMaxTextFileBytes);
// The file parsed as JSON; Errors "cannot open WHAT 'PATH'" and "'PATH': malformed JSON: ...".
nlohmann::json read_json_file(const std::string& path, const std::string& what);

}  // namespace ditto
