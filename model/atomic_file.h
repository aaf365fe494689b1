// Whole files: written so that they appear whole or not at all (write beside, flush, rename), and
// read whole (as text, or as JSON) with errors that name the file.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <stdexcept>
#include <utility>
#include <string>

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

// Whether something exists at `path` (a stat, which never opens it: a FIFO does not block).
bool path_exists(const std::string& path);

// The file's bytes; an Error "cannot read 'PATH'" when it cannot be opened.
std::string read_text_file(const std::string& path);
// The file parsed as JSON; Errors "cannot open WHAT 'PATH'" and "'PATH': malformed JSON: ...".
nlohmann::json read_json_file(const std::string& path, const std::string& what);

}  // namespace ditto
