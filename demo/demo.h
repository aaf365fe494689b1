// Registers the demo's pieces with the product's registries: its word-level text encoder (found in a
// model directory holding text_encoder.safetensors) with its fixed prompt sets, and the adherence
// reading of demo videos in metrics.json. The ditto command, the benchmarks and the tests call it;
// a library user who wants the demo calls it too (calling it again changes nothing).
#pragma once

namespace ditto {
void register_demo();
}
