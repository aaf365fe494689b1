// Writing a file so that it appears whole or not at all: write beside it, flush, rename.
#pragma once
#include <functional>
#include <ostream>
#include <string>

namespace ditto {

// Calls `write` with a stream to a temporary file next to `path`, then renames it onto `path`.
// On any failure the temporary file is removed and an Error names `path`.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);

}  // namespace ditto
