// Version strings (see version.h); the SHA header is generated at build time.
#include "pipeline/version.h"

#include "ditto_git_sha.h"

namespace ditto {
std::string ditto_version() { return DITTO_VERSION; }
std::string ditto_git_sha() { return DITTO_GIT_SHA; }
}  // namespace ditto
