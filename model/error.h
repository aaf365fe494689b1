// ditto's one exception type: its message names the thing that is wrong (file, tensor, option, rank).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace ditto {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Concatenates its arguments with operator<< into an Error message.
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw Error(os.str());
}

}  // namespace ditto
