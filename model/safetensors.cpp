// safetensors reading and writing; see safetensors.h for the guarantees.
#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "model/atomic_file.h"
#include "model/error.h"

namespace ditto {

namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the format's own limit is 100 MB

struct DTypeInfo {
  const char* name;
  at::ScalarType type;
  size_t size;
};

const DTypeInfo kDTypes[] = {
    {"F64", at::kDouble, 8}, {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2}, {"BF16", at::kBFloat16, 2},
    {"I64", at::kLong, 8},   {"I32", at::kInt, 4},   {"I16", at::kShort, 2}, {"I8", at::kChar, 1},
    {"U8", at::kByte, 1},    {"BOOL", at::kBool, 1},
};

const DTypeInfo* dtype_info(const std::string& name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

}  // namespace

at::ScalarType safetensors_scalar_type(const std::string& dtype) {
  const DTypeInfo* d = dtype_info(dtype);
  if (!d) fail("unsupported safetensors dtype '", dtype, "'");
  return d->type;
}

size_t safetensors_dtype_size(const std::string& dtype) {
  const DTypeInfo* d = dtype_info(dtype);
  if (!d) fail("unsupported safetensors dtype '", dtype, "'");
  return d->size;
}

std::string safetensors_dtype_name(at::ScalarType type) {
  for (const auto& d : kDTypes)
    if (d.type == type) return d.name;
  fail("cannot store dtype ", c10::toString(type), " in safetensors");
}

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // a FIFO must not block the open
  if (fd < 0) fail("cannot open '", path, "': ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("'", path, "' is not a regular file");
  }
  file_size_ = static_cast<size_t>(st.st_size);
  if (file_size_ < 8) {
    ::close(fd);
    fail("'", path, "' is not a safetensors file: ", file_size_, " bytes, too short for the 8-byte header length");
  }
  void* p = ::mmap(nullptr, file_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail("cannot map '", path, "': ", std::strerror(errno));
  const size_t size = file_size_;
  mapping_ = std::shared_ptr<void>(p, [size](void* q) { ::munmap(q, size); });
  const auto* bytes = static_cast<const uint8_t*>(p);

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[i];
  if (n == 0 || n > kMaxHeaderBytes || n > file_size_ - 8)
    fail("'", path, "' is not a safetensors file or is truncated: its header length does not fit in ",
         file_size_, " bytes");
  const char* header = reinterpret_cast<const char*>(bytes + 8);
  if (header[0] != '{')
    fail("'", path, "' is not a safetensors file: the header does not start with a JSON object");
  nlohmann::json j;
  try {
    j = parse_json<nlohmann::json>(header, header + n);
  } catch (const std::exception& e) {
    fail("'", path, "': malformed safetensors JSON header: ", e.what());
  }
  if (!j.is_object()) fail("'", path, "': the safetensors header is not a JSON object");
  data_offset_ = 8 + n;
  const uint64_t data_size = file_size_ - data_offset_;

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("'", path, "': __metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m)
        metadata_[m.key()] = m.value().is_string() ? m.value().get<std::string>() : dump_json(m.value());
      continue;
    }
    auto where = [&] { return "'" + path + "', tensor '" + name + "'"; };
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      fail(where(), ": entry needs dtype, shape and data_offsets");
    SafetensorsEntry e;
    e.name = name;
    if (!v["dtype"].is_string()) fail(where(), ": dtype is not a string");
    e.dtype = v["dtype"].get<std::string>();
    const DTypeInfo* d = dtype_info(e.dtype);
    if (!d) fail(where(), ": unsupported dtype '", e.dtype, "'");
    if (!v["shape"].is_array()) fail(where(), ": shape is not an array");
    uint64_t numel = 1;
    for (const auto& s : v["shape"]) {
      if (!s.is_number_unsigned()) fail(where(), ": shape entries must be non-negative integers");
      const uint64_t dim = s.get<uint64_t>();
      if (dim > (1ull << 40) || (dim && numel > (1ull << 62) / dim)) fail(where(), ": shape is too large");
      numel *= dim;
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(where(), ": data_offsets must be two non-negative integers");
    e.begin = off[0].get<uint64_t>();
    e.end = off[1].get<uint64_t>();
    if (e.begin > e.end) fail(where(), ": data_offsets [", e.begin, ", ", e.end, "] run backwards");
    if (e.end > data_size)
      fail(where(), ": data_offsets end ", e.end, " lies past the data section (", data_size,
           " bytes): the file is truncated or the header lies");
    // numel * size may not fit in 64 bits.
    const bool overflow = numel > UINT64_MAX / d->size;
    if (overflow || e.end - e.begin != numel * d->size)
      fail(where(), ": ", e.end - e.begin, " bytes stored but dtype ", e.dtype, " and shape need ",
           overflow ? std::string("more than 2^64") : std::to_string(numel * d->size));
    entries_.push_back(std::move(e));
  }
  // Tensors must not overlap (the format also forbids holes; a hole wastes bytes but hides nothing).
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : entries_) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->begin < b->begin || (a->begin == b->begin && a->end < b->end); });
  const SafetensorsEntry* reach = nullptr;  // the entry reaching furthest so far
  for (const auto* e : by_offset) {
    if (e->begin == e->end) continue;  // empty tensors occupy nothing
    if (reach && e->begin < reach->end)
      fail("'", path, "': tensors '", reach->name, "' and '", e->name, "' overlap");
    if (!reach || e->end > reach->end) reach = e;
  }
  for (size_t i = 0; i < entries_.size(); ++i) index_[entries_[i].name] = i;
}

SafetensorsFile::~SafetensorsFile() = default;

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) fail("'", path_, "' has no tensor '", name, "'");
  const DTypeInfo* d = dtype_info(e->dtype);
  auto* base = static_cast<uint8_t*>(mapping_.get()) + data_offset_ + e->begin;
  auto opts = at::TensorOptions().dtype(d->type);
  if (reinterpret_cast<uintptr_t>(base) % d->size == 0) {
    auto keep = mapping_;
    // The mapping is read-only: callers that write must copy (tensor(name, options) always does).
    return at::from_blob(base, e->shape, [keep](void*) {}, opts);
  }
  at::Tensor t = at::empty(e->shape, opts);
  std::memcpy(t.data_ptr(), base, e->end - e->begin);
  return t;
}

at::Tensor SafetensorsFile::tensor(const std::string& name, const at::TensorOptions& to) const {
  at::Tensor t = tensor(name);
  return t.to(to, /*non_blocking=*/false, /*copy=*/true);
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> cpu;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) fail("cannot save undefined tensor '", name, "' to '", path, "'");
    if (header.contains(name)) fail("duplicate tensor name '", name, "' while writing '", path, "'");
    at::Tensor c = t.detach().to(at::kCPU).contiguous();
    const uint64_t nbytes = c.numel() * c.element_size();
    header[name] = {{"dtype", safetensors_dtype_name(c.scalar_type())},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    cpu.push_back(std::move(c));
  }
  std::string h = dump_json(header);
  h.append((8 - h.size() % 8) % 8, ' ');  // keep the data section 8-byte aligned
  write_file_atomic(path, [&](std::ostream& out) {
    uint64_t n = h.size();
    char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    out.write(len, 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const auto& c : cpu) out.write(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  });
}

std::map<std::string, at::Tensor> load_safetensors(const std::string& path) {
  SafetensorsFile f(path);
  std::map<std::string, at::Tensor> out;
  for (const auto& e : f.entries()) out[e.name] = f.tensor(e.name).clone();
  return out;
}

}  // namespace ditto
