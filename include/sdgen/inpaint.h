#pragma once

// Inpainting masks: from a PNG's pixels to the binary mask diffusers'
// StableDiffusionInpaintPipeline conditions on, and A1111's paste-back of
// the original image outside a (feathered) mask. The sampling itself is in
// Pipeline::generate (pipeline.cpp).

#include <torch/torch.h>

namespace sdgen {

// Images [N, C, H, W] float32 in [0, 1] resized to height x width the way
// the pipeline resizes an init image (diffusers resizes PIL images with
// Lanczos; bicubic with antialiasing is the closest libtorch has), clamped to
// [0, 1]; returned as is when the size already fits.
torch::Tensor resize_unit_images(const torch::Tensor& images, int height, int width);

// A mask image's pixels [H, W, C] uint8 (C = 1 gray, 2 gray + alpha, 3 RGB,
// 4 RGBA) as gray [H, W] uint8, the way PIL's convert("L") does it: ITU-R
// 601-2 luma with PIL's fixed-point rounding, (19595 R + 38470 G + 7471 B +
// 0x8000) >> 16; alpha is ignored.
torch::Tensor mask_to_gray(const torch::Tensor& pixels);

// diffusers' mask_processor (VaeImageProcessor with do_binarize and
// do_convert_grayscale): the gray mask [H, W] uint8 resized to height x
// width (as the init image is), divided by 255 and binarized at 0.5:
// [1, 1, height, width] float32 of 0 (keep) and 1 (repaint).
torch::Tensor binarize_mask(const torch::Tensor& gray, int height, int width);

// A1111's mask blur (modules/processing.py, StableDiffusionProcessingImg2Img
// .init): a Gaussian of standard deviation `sigma` pixels over a kernel of
// 2 * int(2.5 * sigma + 0.5) + 1 taps, along x then y, borders reflected as
// OpenCV's BORDER_REFLECT_101. [H, W] float32 in [0, 1]; sigma 0 returns it.
torch::Tensor blur_mask(const torch::Tensor& mask, int sigma);

// A1111's overlay: the generated images [B, H, W, 3] float32 in [0, 1] where
// the mask [H, W] (0..1) is 1, the original image [H, W, 3] uint8 where it is
// 0, mixed in between. Pixels the mask leaves at 0 are the original's exactly
// (after rounding to 8 bits).
torch::Tensor paste_back(const torch::Tensor& images, const torch::Tensor& original_u8,
                         const torch::Tensor& mask);

}  // namespace sdgen
