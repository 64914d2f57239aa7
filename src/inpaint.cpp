// Inpainting masks (see sdgen/inpaint.h). Sources: diffusers
// image_processor.py (VaeImageProcessor.preprocess, binarize), Pillow
// Convert.c (rgb2l), A1111 modules/processing.py (mask blur, overlay).

#include "sdgen/inpaint.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "sdgen/error.h"

namespace sdgen {

torch::Tensor resize_unit_images(const torch::Tensor& images, int height, int width) {
  if (images.size(2) == height && images.size(3) == width) return images;
  namespace F = torch::nn::functional;
  return F::interpolate(images, F::InterpolateFuncOptions()
                                    .size(std::vector<int64_t>{height, width})
                                    .mode(torch::kBicubic)
                                    .align_corners(false)
                                    .antialias(true))
      .clamp(0, 1);
}

torch::Tensor mask_to_gray(const torch::Tensor& pixels) {
  if (pixels.dim() != 3 || pixels.scalar_type() != torch::kUInt8 || pixels.size(2) < 1 ||
      pixels.size(2) > 4)
    throw Error("a mask must be a uint8 image [H, W, 1..4]");
  const int64_t channels = pixels.size(2);
  if (channels <= 2) return pixels.select(2, 0).contiguous();
  const auto p = pixels.to(torch::kInt64);
  const auto luma =
      (p.select(2, 0) * 19595 + p.select(2, 1) * 38470 + p.select(2, 2) * 7471 + 0x8000)
          .div(65536, "floor");
  return luma.to(torch::kUInt8).contiguous();
}

torch::Tensor binarize_mask(const torch::Tensor& gray, int height, int width) {
  if (gray.dim() != 2 || gray.scalar_type() != torch::kUInt8)
    throw Error("a mask must be a gray uint8 image [H, W]");
  auto m = gray.to(torch::kFloat32).div(255.0).unsqueeze(0).unsqueeze(0);
  m = resize_unit_images(m, height, width);
  // VaeImageProcessor.binarize: image[image < 0.5] = 0, image[image >= 0.5] = 1.
  return (m >= 0.5).to(torch::kFloat32).contiguous();
}

namespace {

// OpenCV's BORDER_REFLECT_101 index ("gfedcb|abcdefgh|gfedcba") for any i.
int64_t reflect101(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

// One 1-D Gaussian pass along the last dimension of x [R, N].
torch::Tensor blur_rows(const torch::Tensor& x, const torch::Tensor& kernel) {
  const int64_t n = x.size(1), k = kernel.size(0), r = k / 2;
  std::vector<int64_t> index(static_cast<size_t>(n + 2 * r));
  for (int64_t i = 0; i < n + 2 * r; ++i) index[static_cast<size_t>(i)] = reflect101(i - r, n);
  const auto padded = x.index_select(1, torch::tensor(index, torch::kInt64));
  namespace F = torch::nn::functional;
  return F::conv1d(padded.unsqueeze(1), kernel.view({1, 1, k})).squeeze(1);
}

}  // namespace

torch::Tensor blur_mask(const torch::Tensor& mask, int sigma) {
  if (mask.dim() != 2) throw Error("blur_mask: the mask must be [H, W]");
  if (sigma <= 0) return mask;
  // A1111: kernel_size = 2 * int(2.5 * blur + 0.5) + 1 and cv2.GaussianBlur
  // with that sigma (OpenCV's getGaussianKernel: exp(-(i - c)^2 / (2 s^2)),
  // normalised to sum 1).
  const int64_t k = 2 * static_cast<int64_t>(2.5 * sigma + 0.5) + 1;
  std::vector<double> taps(static_cast<size_t>(k));
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) {
    const double d = static_cast<double>(i - (k - 1) / 2);
    taps[static_cast<size_t>(i)] = std::exp(-d * d / (2.0 * sigma * sigma));
    sum += taps[static_cast<size_t>(i)];
  }
  for (auto& t : taps) t /= sum;
  const auto kernel = torch::tensor(taps, torch::kFloat64).to(torch::kFloat32);
  auto m = mask.to(torch::kFloat32).contiguous();
  m = blur_rows(m, kernel);                       // along x
  m = blur_rows(m.t().contiguous(), kernel).t();  // along y
  return m.clamp(0, 1).contiguous();
}

torch::Tensor paste_back(const torch::Tensor& images, const torch::Tensor& original_u8,
                         const torch::Tensor& mask) {
  if (images.dim() != 4 || original_u8.dim() != 3 || mask.dim() != 2 ||
      images.size(1) != original_u8.size(0) || images.size(2) != original_u8.size(1) ||
      mask.size(0) != images.size(1) || mask.size(1) != images.size(2))
    throw Error("paste_back: the images, the original and the mask must have one size");
  const auto original = original_u8.to(torch::kFloat32).div(255.0).unsqueeze(0);
  const auto m = mask.to(torch::kFloat32).unsqueeze(0).unsqueeze(-1);
  auto out = images.to(torch::kFloat32) * m + original * (1 - m);
  // Where the mask is 0 the original's own values (x / 255, exact after
  // rounding back to 8 bits), whatever the arithmetic above gave.
  return torch::where(m == 0, original.expand_as(out), out).contiguous();
}

}  // namespace sdgen
