// ditto's one exception type: its message names the thing that is wrong (file, tensor, option, rank).
#pragma once
#include <exception>
#include <new>
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

// What an exception says, for a user: an Error's message as it is, an allocation that failed as
// what it means (std::bad_alloc says only "std::bad_alloc").
inline std::string error_text(const std::exception& e) {
  if (dynamic_cast<const std::bad_alloc*>(&e))
    return std::string("out of memory: an allocation failed (") + e.what() +
           "); use fewer frames or a smaller size, more ranks, or a larger machine";
  return e.what();
}

// A model size read from a config: an Error unless 1 <= value <= max ("config: NAME must be in 1 .. MAX").
inline void check_config_size(const char* name, long long value, long long max) {
  if (value < 1 || value > max) fail("config: ", name, " must be in 1 .. ", max, ", got ", value);
}

}  // namespace ditto
