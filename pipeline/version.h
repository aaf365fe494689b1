// ditto's version (the CMake project version) and the git commit it was built from.
#pragma once
#include <string>

namespace ditto {
std::string ditto_version();  // "0.2.0"
std::string ditto_git_sha();  // 12 hex digits (+ "-dirty"), or "unknown" outside a git checkout
}  // namespace ditto
