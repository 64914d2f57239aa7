#!/usr/bin/env python3
"""Writes the fuzzers' seed corpus, fuzz/corpus/<target>/, from scratch.

Valid inputs of each format plus hand-made edge cases; the whole corpus is kept
small (a few KB). Run from anywhere: python3 fuzz/make_corpus.py
"""
import base64
import json
import os
import shutil
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors --------------------------------------------------------------

def safetensors(header, data=b"", pad=True):
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def raw_header(text, data=b""):
    return struct.pack("<Q", len(text)) + text + data


def safetensors_seeds():
    t = "safetensors"
    write(t, "valid_two", safetensors(
        {"__metadata__": {"format": "pt"},
         "a.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
         "b.bias": {"dtype": "F16", "shape": [3], "data_offsets": [16, 22]}},
        bytes(range(22))))
    write(t, "valid_all_dtypes", safetensors(
        {"f64": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]},
         "i64": {"dtype": "I64", "shape": [1], "data_offsets": [8, 16]},
         "i32": {"dtype": "I32", "shape": [1], "data_offsets": [16, 20]},
         "bf16": {"dtype": "BF16", "shape": [1], "data_offsets": [20, 22]},
         "u8": {"dtype": "U8", "shape": [2], "data_offsets": [22, 24]}},
        bytes(24)))
    write(t, "scalar_and_empty", safetensors(
        {"s": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
         "e": {"dtype": "F32", "shape": [0, 5], "data_offsets": [4, 4]}}, bytes(4)))
    write(t, "empty_header", safetensors({}))
    write(t, "short", b"\x02\x00\x00")
    write(t, "header_too_long", struct.pack("<Q", 1000) + b"{}")
    write(t, "header_huge", struct.pack("<Q", 1 << 62) + b"{}")
    write(t, "not_json", raw_header(b"{not json"))
    write(t, "not_object", raw_header(b"[1,2,3]"))
    write(t, "overlap", safetensors(
        {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
         "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, bytes(6)))
    write(t, "out_of_range", safetensors(
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(8)))
    write(t, "unknown_dtype", safetensors(
        {"a": {"dtype": "Q4", "shape": [1], "data_offsets": [0, 1]}}, bytes(1)))
    write(t, "shape_overflow", safetensors(
        {"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 2], "data_offsets": [0, 0]}}))
    write(t, "negative_dim", safetensors(
        {"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4)))
    write(t, "float_offsets", raw_header(
        b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0.0,1e0]}}', b"x"))
    write(t, "metadata_not_string", safetensors({"__metadata__": {"k": 1}}))
    write(t, "nested_deep", raw_header(b'{"a":' + b"[" * 200 + b"]" * 200 + b"}"))
    write(t, "utf8_names", safetensors(
        {"\u00e9\u4e2d": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"z"))


# ---- tokenizer ----------------------------------------------------------------

def tokenizer_seeds():
    t = "tokenizer"
    write(t, "plain", "a photograph of an astronaut riding a horse")
    write(t, "punct", "Hello, World!! it's (masterpiece:1.2), 8k... #1 <3")
    write(t, "specials", "<|startoftext|>a<|endoftext|>b <|endoftext|><|endoftext|>")
    write(t, "partial_special", "<|startof <|endoftext| |>")
    write(t, "unicode", "caf\u00e9 \u0063\u0301 na\u00efve \u00c5ngstr\u00f6m \u4e2d\u6587 "
          "\ud55c\uad6d\uc5b4 \u0391\u0392\u0393 \U0001F600 \u2163 \u00bd")
    write(t, "whitespace", "a\t\tb\r\n\u3000c\u00a0\u2028d   ")
    write(t, "combining", "e\u0301\u0323\u0302 o\u0308\u0304 \u1100\u1161\u11a8 \u0958")
    write(t, "invalid_utf8", b"ab\xff\xfe\xc0\x80 \xe0\x80\x80 \xed\xa0\x80 \xf4\x90\x80\x80 "
          b"\xc3 \xe2\x82 end")
    write(t, "digits", "1234567890 3.14 1e10 \u0661\u0662\u0663")
    write(t, "long_word", "a" * 300)
    write(t, "contractions", "I'm you're we've they'll she'd it's don't")
    write(t, "nul", b"a\x00b\x00\x00c")


# ---- sentencepiece (each input is text and also the bytes of a .model) -------

def sentencepiece_seeds():
    t = "sentencepiece"
    write(t, "caption", "a small red circle above a blue square on a white background")
    write(t, "cased_spaces", "  A  Small\tRED\n circle   ")
    write(t, "unknown", "zebra \u2713\u2713 caf\u00e9 \U0001F600")
    write(t, "invalid_utf8", b"red\xff\xfe\xc0\x80 \xed\xa0\x80 \xc3 \xe2\x96\x81 blue")
    write(t, "specials", "<s></s><pad><unk> \u2581red\u2581")
    # A real model (trained by sdgen-spm, see fuzz/fuzz_sentencepiece.cpp).
    with open(os.path.join(os.path.dirname(ROOT), "data", "captions-spiece.model"), "rb") as f:
        write(t, "model", f.read())


# ---- prompt weights (two option bytes, then the prompt) -----------------------

def prompt_weights_seeds():
    t = "prompt_weights"
    opts = b"\x4b\x18"  # chunk length 75, backtrack 20, comma token ','
    write(t, "plain", opts + b"a red circle above a blue square")
    write(t, "emphasis", opts + b"(a cat:1.5), ((dog)), [bird], [[fish]], (x:-0.5) (y: +2 )")
    write(t, "escapes", opts + b"\\(not\\) \\[weighted\\] back\\\\slash \\ lone")
    write(t, "break", opts + b"first BREAK second\nBREAK third BREAKfast (BREAK) [a BREAK b]")
    write(t, "unbalanced", opts + b"((a (b [c ] ) ] ) ) :) (d:1.2.3) (e:) (:2)")
    write(t, "commas_small_chunks", b"\x08\x06" + b"one, two three four, five six seven, " * 4)
    write(t, "nested_numbers", opts + b"(((((x:1e308):1e308))))) [(y:.)] (z:+.5e)")
    write(t, "utf8", opts + "(\u00e9t\u00e9:1.1) [\u4e2d\u6587] BREAK \U0001F600".encode())


# ---- LoRA names (fuzz_lora_names: key names, --lora arguments, prompt tags) ----

def lora_names_seeds():
    t = "lora_names"
    write(t, "argument", b"dir/x.safetensors:0.5")
    write(t, "ldm_key", b"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight")
    write(t, "peft_key", b"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight")
    write(t, "tags", b"a cat <lora:style:0.8> on <lora:b:te=0.5:unet=1>")


# ---- prompt files -------------------------------------------------------------

def prompt_file_seeds():
    t = "prompt_file"
    write(t, "mixed",
          "# a comment\n"
          "a plain prompt\n"
          "\n"
          "   \t \r\n"
          '{"prompt": "a cat", "seed": 42, "steps": 20, "cfg_scale": 7.5, "width": 512, '
          '"height": 768, "sampler": "euler_a", "scheduler": "Karras", "batch_size": 2, '
          '"clip_skip": 2, "negative_prompt": "blurry", "output": "out/{seed}.png"}\n'
          '{"prompt": "img2img", "init_image": "in.png", "strength": 0.6}\r\n')
    write(t, "errors",
          '{"prompt": 1}\n'
          '{"steps": 0}\n'
          '{"width": 513}\n'
          '{"width": 8.0, "height": 1e3}\n'
          '{"seed": -1}\n'
          '{"seed": 18446744073709551615}\n'
          '{"strength": 0}\n'
          '{"cfg_scale": "7"}\n'
          '{"unknown": true}\n'
          '{"scheduler": "fast"}\n'
          '{"output": ""}\n'
          '{not json\n'
          '{}\n'
          '[1, 2]\n')
    write(t, "numbers",
          '{"steps": 1e2, "seed": 9007199254740993, "batch_size": 64.0, "cfg_scale": 1e308}\n'
          '{"steps": -0.0, "width": 1.7976931348623157e308, "clip_skip": 4.5}\n')
    write(t, "unicode", '{"prompt": "caf\\u00e9 \\ud83d\\ude00 \\ud800"}\n\u00e9\u00e8 plain\n')
    write(t, "no_newline", "last line without newline")
    write(t, "nested", "{" + '"prompt": ' + "[" * 100 + "]" * 100 + "}\n")


# ---- PNG metadata and A1111 parameters ----------------------------------------

def png_chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png(width, height, color_type, bit_depth=8, text=(), interlace=0, raw=None, chunks=()):
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    if raw is None:
        row_bytes = (width * channels * bit_depth + 7) // 8
        raw = b"".join(b"\x00" + bytes((x * 37 + y * 11) & 0xFF for x in range(row_bytes))
                       for y in range(height))
    out = b"\x89PNG\r\n\x1a\n"
    out += png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type,
                                          0, 0, interlace))
    for key, value in text:
        out += png_chunk(b"tEXt", key + b"\x00" + value)
    for kind, data in chunks:
        out += png_chunk(kind, data)
    if color_type == 3:
        out += png_chunk(b"PLTE", bytes(range(48)))
    out += png_chunk(b"IDAT", zlib.compress(raw))
    out += png_chunk(b"IEND", b"")
    return out


PARAMS = ("a red circle, (masterpiece:1.2)\nNegative prompt: blurry, low quality\n"
          "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 1234, "
          "Size: 512x768, Model hash: 0123456789, Model: v1-5, Clip skip: 2, "
          'Lora hashes: "a: 1, b: 2", Version: sdgen 0.1.0')


def png_params_seeds():
    t = "png_params"
    write(t, "rgb_params", png(4, 3, 2, text=[(b"parameters", PARAMS.encode())]))
    write(t, "rgba", png(2, 2, 6, text=[(b"Comment", b"x"), (b"parameters", b"p\nSteps: 1")]))
    write(t, "gray16_interlaced", png(3, 3, 0, bit_depth=16, interlace=1))
    write(t, "palette", png(4, 2, 3, bit_depth=4))
    write(t, "gray_alpha", png(2, 2, 4))
    write(t, "bad_text", png(1, 1, 2, text=[(b"", b"no key"), (b"parameters", b"")]))
    write(t, "truncated", png(4, 4, 2)[:60])
    write(t, "short_idat", png(8, 8, 2, raw=b"\x00" * 10))
    write(t, "signature_only", b"\x89PNG\r\n\x1a\n")
    write(t, "params_text", PARAMS)
    write(t, "params_quoted",
          'p\nSteps: 5, Seed: "12", Size: 64x64x, Sampler: Euler a, CFG scale: nan, '
          'Model: "a, \\"b\\": c", Eta: 0.5, Batch size: 2, Batch pos: 1, Long prompt: truncate')
    write(t, "params_odd",
          "Negative prompt: only negative\nSeed: -1, Steps: 99999999999999999999, "
          "Size: 0x0, Schedule type: Exponential, Clip skip: 0, Denoising strength: 1e400")
    write(t, "params_no_fields", "just a prompt\nover two lines\n")
    # Text chunks as other tools write them: iTXt (Pillow / A1111 for text
    # beyond Latin-1), zTXt, Latin-1 and raw UTF-8 tEXt, and broken ones.
    cjk = "\u685c\u306e\u732b \U0001F98A\nSteps: 2, Sampler: DDIM, Seed: 5, Size: 64x64"
    write(t, "params_cjk", cjk)
    write(t, "itxt_params", png(2, 2, 2, chunks=[
        (b"iTXt", b"parameters\x00\x00\x00\x00\x00" + cjk.encode())]))
    write(t, "itxt_zip", png(2, 1, 2, chunks=[
        (b"iTXt", b"parameters\x00\x01\x00ja\x00\xe3\x83\x91\x00" + zlib.compress(cjk.encode())),
        (b"iTXt", b"Broken\x00\x00\x00en")]))
    write(t, "ztxt", png(1, 2, 0, chunks=[
        (b"zTXt", b"Comment\x00\x00" + zlib.compress("Z\u00fcrich".encode("latin-1"))),
        (b"zTXt", b"parameters\x00\x00" + zlib.compress(PARAMS.encode()))]))
    write(t, "text_latin1_utf8", png(1, 1, 2, text=[
        (b"Title", "\u00e9t\u00e9".encode("latin-1")), (b"parameters", cjk.encode())]))
    write(t, "compressed_bad", png(1, 1, 2, chunks=[
        (b"zTXt", b"parameters\x00\x00not zlib"),
        (b"zTXt", b"Comment\x00\x07" + zlib.compress(b"x")),
        (b"iTXt", b"parameters\x00\x01\x00\x00\x00" + zlib.compress(b"p")[:-3]),
        (b"iTXt", b"parameters\x00\x02\x00\x00\x00\xff\xfe")]))


# ---- pickle (PyTorch checkpoints) --------------------------------------------

def pkl_str(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def pkl_int(v):
    return b"K" + bytes([v]) if 0 <= v < 256 else b"J" + struct.pack("<i", v)


def pkl_ints(values):
    return b"(" + b"".join(pkl_int(v) for v in values) + b"t"


def pkl_tensor(storage, key, numel, offset, size, stride):
    """torch._utils._rebuild_tensor_v2 as torch.save pickles a tensor."""
    return (b"ctorch._utils\n_rebuild_tensor_v2\n(" +
            b"(" + pkl_str("storage") + b"ctorch\n" + storage.encode() + b"\n" + pkl_str(key) +
            pkl_str("cpu") + pkl_int(numel) + b"tQ" + pkl_int(offset) + pkl_ints(size) +
            pkl_ints(stride) + b"\x89ccollections\nOrderedDict\n)Rq\x00tR")


def checkpoint(pkl, storages, zip64=False):
    import io
    import zipfile
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        def add(name, data):
            with z.open(zipfile.ZipInfo(name), "w", force_zip64=zip64) as f:
                f.write(data)
        add("archive/data.pkl", pkl)
        for key, data in storages:
            add("archive/data/" + key, data)
        add("archive/version", b"3\n")
    return buf.getvalue()


def pickle_seeds():
    import pickle
    t = "pickle"
    obj = {"a": 1, "b": [1.5, "x", b"y", None, True], "c": (1, 2, 3), "d": {1, 2},
           "e": 2 ** 70, "f": -5, "g": "\u00e9\u4e2d"}
    for proto in range(6):
        write(t, f"plain_proto{proto}", pickle.dumps(obj, protocol=proto))
    floats = struct.pack("<12f", *range(12))
    sd = (b"\x80\x02}(" + pkl_str("state_dict") + b"}(" +
          pkl_str("w") + pkl_tensor("FloatStorage", "0", 12, 0, [3, 4], [4, 1]) +
          pkl_str("t") + pkl_tensor("FloatStorage", "0", 12, 1, [3, 3], [1, 4]) +
          pkl_str("h") + pkl_tensor("HalfStorage", "1", 4, 0, [2, 2], [2, 1]) +
          b"u" + pkl_str("global_step") + pkl_int(470) + b"u.")
    storages = [("0", floats), ("1", b"\x00\x3c" * 4)]
    write(t, "checkpoint", checkpoint(sd, storages))
    write(t, "checkpoint_zip64", checkpoint(sd, storages, zip64=True))
    write(t, "checkpoint_short_storage", checkpoint(sd, [("0", floats[:20]), storages[1]]))
    emb = (b"\x80\x02}(" + pkl_str("string_to_param") + b"}(" + pkl_str("*") +
           pkl_tensor("FloatStorage", "0", 12, 0, [3, 4], [4, 1]) + b"u" + pkl_str("name") +
           pkl_str("cat") + b"u.")
    write(t, "embedding", checkpoint(emb, [("0", floats)]))
    evil = b"\x80\x02}(" + pkl_str("state_dict") + b"cposix\nsystem\n(" + pkl_str("true") + b"tRu."
    write(t, "malicious", checkpoint(evil, []))
    write(t, "deep_lists", b"\x80\x02" + b"]" * 500 + b"a" * 499 + b".")
    write(t, "memo_huge", b"\x80\x02j\xff\xff\xff\xff.")


# ---- web API request bodies (fuzz_image_api: A1111 txt2img, OpenAI images) ----

def image_api_seeds():
    t = "image_api"
    def body(name, value):
        write(t, name, json.dumps(value, ensure_ascii=False))
    # A1111's wiki example (API.md) and a body with most fields set.
    body("a1111_wiki", {"prompt": "maltese puppy", "steps": 5})
    body("a1111_full", {
        "prompt": "a red cube (on a table:1.2)", "negative_prompt": "blurry", "seed": 1234,
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "batch_size": 2, "n_iter": 3,
        "steps": 20, "cfg_scale": 7.5, "width": 512, "height": 768, "restore_faces": False,
        "tiling": False, "enable_hr": False, "styles": [], "subseed": -1,
        "subseed_strength": 0, "eta": None, "sampler_index": "Euler a",
        "override_settings": {"CLIP_stop_at_last_layers": 2, "sd_model_checkpoint": "x"},
        "override_settings_restore_afterwards": True, "send_images": True,
        "alwayson_scripts": {}, "script_args": []})
    body("a1111_bad_types", {"prompt": 3, "steps": "many", "seed": 1.5, "width": -64,
                             "override_settings": [1], "n_iter": 1e30})
    body("a1111_unsupported", {"enable_hr": True, "styles": ["a"], "script_name": "x",
                               "seed_resize_from_h": 64, "subseed_strength": 0.5})
    body("a1111_seed_huge", {"seed": 18446744073709551615, "sampler_index": "No Such"})
    body("openai_full", {"prompt": "a cat", "n": 2, "size": "256x256",
                         "response_format": "b64_json", "model": "dall-e-2", "user": "u",
                         "quality": "standard", "style": "vivid"})
    body("openai_bad", {"prompt": "", "n": 11, "size": "64x", "response_format": "url",
                        "stream": True})
    body("openai_sizes", {"prompt": "p", "size": "99999999999x8"})
    write(t, "nested", "{\"prompt\":" + "[" * 100 + "]" * 100 + "}")
    write(t, "not_object", b'["prompt", 1, null, 2.5e308]')
    # JSON escapes, a surrogate pair among them.
    write(t, "unicode", rb'{"prompt": "\u00e9t\u00e9 \ud83d\ude00", "size": "64x64"}')
    # img2img: an 8x8 RGB init image (a data: URL) and a gray mask; and a PNG
    # header claiming 100000x100000 pixels (refused before decoding).
    rgb = base64.b64encode(png(8, 8, 2)).decode()
    gray = base64.b64encode(png(8, 8, 0)).decode()
    body("img2img_inpaint", {"prompt": "a cat", "init_images": ["data:image/png;base64," + rgb],
                             "mask": gray, "denoising_strength": 0.6, "mask_blur": 2,
                             "inpainting_mask_invert": 1, "inpainting_fill": 1,
                             "resize_mode": 0, "inpaint_full_res": False,
                             "model": "other-model"})
    body("img2img_bomb", {"init_images": [base64.b64encode(png(100000, 100000, 0, raw=b"")).decode()],
                          "denoising_strength": 2, "model": "../x"})


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    safetensors_seeds()
    tokenizer_seeds()
    sentencepiece_seeds()
    prompt_weights_seeds()
    lora_names_seeds()
    prompt_file_seeds()
    png_params_seeds()
    pickle_seeds()
    image_api_seeds()
    total = sum(os.path.getsize(os.path.join(d, f))
                for d, _, files in os.walk(ROOT) for f in files)
    print(f"fuzz corpus: {total} bytes in {ROOT}")


if __name__ == "__main__":
    main()
