#!/usr/bin/env python3
"""The diffusers side of sdgen's GPU benchmarks (scripts/gpu-bench.sh).

Builds diffusers' StableDiffusionPipeline (--model sd15) or
StableDiffusionXLPipeline (--model sdxl) from the architectures' configs with
random fp16 weights (nothing is downloaded: the tokenizers read the CLIP
vocabulary of ../shared/data/clip), then times it eager and torch.compile'd
on CUDA and prints one JSON line per variant: image seconds (median of
--repeats), UNet iterations per second from a latent-only run, VAE decode
seconds, and peak GPU memory. Needs diffusers on PYTHONPATH (e.g. its src/
folder) and transformers.

  python3 scripts/diffusers-baseline.py --model sdxl --steps 30 --size 1024 \\
      --guidance 5 --vocab ../shared/data/clip
"""

import argparse
import json
import statistics
import time

import torch


def sd15_parts():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, layers_per_block=2, sample_size=512)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        hidden_act="quick_gelu", projection_dim=768))
    return unet, vae, text


def sdxl_parts():
    # stable-diffusion-xl-base-1.0's configs.
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                        layers_per_block=2, sample_size=1024, scaling_factor=0.13025,
                        force_upcast=True)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        hidden_act="quick_gelu", projection_dim=768))
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        hidden_act="gelu", projection_dim=1280))
    return unet, vae, text, text_2


def build(model, vocab):
    from diffusers import (EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline)
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(f"{vocab}/vocab.json", f"{vocab}/merges.txt")
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", steps_offset=1,
                                       timestep_spacing="leading")
    if model == "sdxl":
        unet, vae, text, text_2 = sdxl_parts()
        tok_2 = CLIPTokenizer(f"{vocab}/vocab.json", f"{vocab}/merges.txt", pad_token="!")
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text, text_encoder_2=text_2,
                                         tokenizer=tok, tokenizer_2=tok_2, unet=unet,
                                         scheduler=scheduler)
    else:
        unet, vae, text = sd15_parts()
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                       scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda", torch.float16)


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def measure(pipe, args, label):
    kwargs = dict(prompt="a photograph of an astronaut riding a horse", height=args.size,
                  width=args.size, num_inference_steps=args.steps, guidance_scale=args.guidance)
    gen = lambda: torch.Generator("cpu").manual_seed(0)  # noqa: E731
    t_warm, _ = timed(lambda: pipe(**kwargs, generator=gen()))  # compile / autotune here
    torch.cuda.reset_peak_memory_stats()
    images = [timed(lambda: pipe(**kwargs, generator=gen()))[0] for _ in range(args.repeats)]
    latents = [timed(lambda: pipe(**kwargs, generator=gen(), output_type="latent"))[0]
               for _ in range(args.repeats)]
    image_s, latent_s = statistics.median(images), statistics.median(latents)
    return {"tool": "diffusers", "variant": label, "model": args.model, "size": args.size,
            "steps": args.steps, "guidance": args.guidance, "dtype": "fp16",
            "device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "warmup_s": round(t_warm, 3), "image_s": round(image_s, 4),
            "unet_it_s": round(args.steps / latent_s, 2),
            "decode_s": round(image_s - latent_s, 4),
            "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["sd15", "sdxl"], default="sd15")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", type=int, default=0, help="default: 512 (sd15) or 1024 (sdxl)")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vocab", default="../shared/data/clip", help="vocab.json + merges.txt")
    p.add_argument("--variants", default="eager,compiled")
    args = p.parse_args()
    args.size = args.size or (1024 if args.model == "sdxl" else 512)
    torch.manual_seed(0)
    t_build, pipe = timed(lambda: build(args.model, args.vocab))
    for variant in args.variants.split(","):
        if variant == "compiled":
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.unet = torch.compile(pipe.unet, fullgraph=True)
        result = measure(pipe, args, variant)
        result["build_s"] = round(t_build, 2)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
