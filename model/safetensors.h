// safetensors reader (memory-mapped, validated) and atomic writer.
// Format: 8-byte little-endian header length N, N bytes of JSON, then the raw tensor bytes.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ditto {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;            // "F32", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

// A validated, memory-mapped safetensors file. Every structural problem (truncation, a header that
// lies about offsets or sizes, an unknown dtype, a file that is not safetensors) is an Error naming
// the file and the tensor; nothing is read lazily past validation.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }

  // The tensor as stored (its own dtype), on the CPU. Shares the mapping when it is aligned; the
  // mapping stays alive as long as any such tensor does.
  at::Tensor tensor(const std::string& name) const;
  // Converted to the given options (dtype/device); always an independent copy or conversion.
  at::Tensor tensor(const std::string& name, const at::TensorOptions& to) const;

 private:
  std::string path_;
  std::shared_ptr<void> mapping_;  // the whole file, read-only
  size_t file_size_ = 0;
  size_t data_offset_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Maps between safetensors dtype names and ATen scalar types.
at::ScalarType safetensors_scalar_type(const std::string& dtype);  // throws for unknown names
std::string safetensors_dtype_name(at::ScalarType type);           // throws for unsupported types
size_t safetensors_dtype_size(const std::string& dtype);

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// Writes tensors (moved to CPU, made contiguous) in the given order. The file is written to a
// temporary name beside `path` and renamed into place, so a reader never sees a half-written file.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Loads every tensor of a file in its stored dtype (a convenience for small files: inputs, fixtures).
std::map<std::string, at::Tensor> load_safetensors(const std::string& path);

}  // namespace ditto
