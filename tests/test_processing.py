"""src/xr0/processing: image patches as Qwen's processor lays them out, the patch embedding, tokenizer and prompt."""

import copy

import numpy as np
import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionPatchEmbed

from xr0.processing.images import patchify


# ---------------------------------------------------------------- processing
def test_patchify_matches_qwen_image_processor():
    from transformers import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    ref = Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3, do_resize=False)(list(imgs), return_tensors="pt")
    ours, grid = patchify(imgs)
    assert grid.tolist() == ref["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 6]]
    assert torch.allclose(ours, ref["pixel_values"].float(), atol=1e-6)


def test_patch_embedding_is_the_stock_conv3d(tiny):
    """The matmul patch embedding (backbone.MatmulPatchEmbed) gives Qwen3-VL's Conv3d result and gradients."""
    embed = tiny.model.vlm.model.visual.patch_embed
    x = torch.randn(40, embed.proj.weight[0].numel())
    fast = embed(x)
    stock = Qwen3VLVisionPatchEmbed.forward(embed, x)  # transformers' own Conv3d forward
    assert fast.shape == stock.shape == (40, embed.embed_dim)
    torch.testing.assert_close(fast, stock, atol=1e-5, rtol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), embed.proj.weight)[0]
    g_stock = torch.autograd.grad(stock.square().sum(), embed.proj.weight)[0]
    torch.testing.assert_close(g_fast, g_stock, atol=1e-4, rtol=1e-4)
    half = copy.deepcopy(tiny.model.vlm).to(torch.bfloat16).model.visual.patch_embed  # a copy uses its own weights
    assert half(x).dtype == torch.bfloat16 and embed(x).dtype == torch.float32


def test_tokenizer_and_prompt(tiny):
    tok = tiny.processor.tokenizer
    assert len(tok) == 151669
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|vision_start|>", "<|image_pad|>"]) == [151644, 151652, 151655]
    assert tok("Hello", add_special_tokens=False)["input_ids"] == [9707]
    ids = tiny.processor.prompt_ids("pick up the cube")
    assert ids.count(151655) == 2 * tiny.processor.image_tokens == 8  # 2 views of 64x64 -> 2 x 4 tokens
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\nThe following observations are captured from multiple views.\n# Base View\n")
    assert "Generate robot actions for the task:\npick up the cube /no_cot<|im_end|>\n<|im_start|>assistant\n<cot></cot>" in text
