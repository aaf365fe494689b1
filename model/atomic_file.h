// Whole files: written so that they appear whole or not at all (write beside, flush, rename), and
// read whole (as text, or as JSON) with errors that name the file.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string>

namespace ditto {

// Calls `write` with a stream to a temporary file next to `path`, then renames it onto `path`.
// On any failure the temporary file is removed and an Error names `path`.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);

// The file's bytes; an Error "cannot read 'PATH'" when it cannot be opened.
std::string read_text_file(const std::string& path);
// The file parsed as JSON; Errors "cannot open WHAT 'PATH'" and "'PATH': malformed JSON: ...".
nlohmann::json read_json_file(const std::string& path, const std::string& what);

}  // namespace ditto
