#pragma once

// PNG reading and writing. Writes are atomic: the PNG goes to a temporary file
// in the same folder and is renamed into place, so an interrupted run never
// leaves half an image behind.

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "sdgen/png_reader.h"  // PngText, decode_png, png_text_chunk

namespace sdgen {

// image: uint8 [H, W, 3] (or [H, W, 1|4]) on any device. Each text entry is
// written as Pillow (and so A1111) writes it: tEXt when Latin-1, else iTXt.
void write_png(const std::string& path, const torch::Tensor& image, const PngText& text = {});
// Encodes to PNG bytes in memory.
std::string encode_png(const torch::Tensor& image, const PngText& text = {});

struct PngImage {
  torch::Tensor pixels;  // uint8 [H, W, C], C as stored (1..4)
  PngText text;          // tEXt, zTXt and iTXt chunks found in the file, as UTF-8
};
// Reads a PNG; throws Error naming the file if it is missing or not a PNG.
PngImage read_png(const std::string& path);

// [B, 3, H, W] float in [-1, 1] (VAE output) -> [B, H, W, 3] uint8, as diffusers'
// VaeImageProcessor.postprocess + numpy_to_pil: round(clamp(x / 2 + 0.5, 0, 1) * 255).
torch::Tensor to_uint8_images(const torch::Tensor& decoded);
// The float step of the same conversion: clamp(x / 2 + 0.5, 0, 1), [B, H, W, 3] float32.
torch::Tensor to_unit_images(const torch::Tensor& decoded);

// Fails early (before minutes of work) when `path` cannot be written: a
// directory, a missing parent folder (created when `create_dirs`), or no write
// permission. Throws Error naming the path.
void check_output_path(const std::string& path, bool create_dirs = true);

}  // namespace sdgen
