// The precompiled header of ditto's LibTorch translation units: ATen only, never torch/torch.h.
#pragma once
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>
