"""The official multi-view prompt (spec §6.7 / §9.2), rendered in Qwen's ChatML format."""

from __future__ import annotations

PREAMBLE = "The following observations are captured from multiple views."
TASK_HEADER = "Generate robot actions for the task:"
VISION = "<|vision_start|>{pads}<|vision_end|>"


def action_prompt(instruction: str, cameras: tuple[str, ...] | list[str], image_tokens: int | list[int]) -> str:
    """User turn with one image block per camera (image_tokens: <|image_pad|> tokens per view, or one count for
    all), the instruction + " /no_cot", and the empty `<cot></cot>` answer."""
    counts = [image_tokens] * len(cameras) if isinstance(image_tokens, int) else list(image_tokens)
    if len(counts) != len(cameras):
        raise ValueError(f"{len(counts)} image token counts for {len(cameras)} cameras")
    views = "".join(f"# {cam}\n{VISION.format(pads='<|image_pad|>' * n)}\n" for cam, n in zip(cameras, counts))
    return (f"<|im_start|>user\n{PREAMBLE}\n{views}{TASK_HEADER}\n{instruction} /no_cot<|im_end|>\n"
            f"<|im_start|>assistant\n<cot></cot><|im_end|>\n")


VL_END = "<|im_end|>"  # closes a vision-language answer; a newline follows it


def vl_prompt(question: str, n_images: int, image_tokens: int) -> str:
    """The prompt of a vision-language sample; its answer follows the assistant header, then VL_END + newline."""
    views = "".join(VISION.format(pads="<|image_pad|>" * image_tokens) for _ in range(n_images))
    return f"<|im_start|>user\n{views}{question}<|im_end|>\n<|im_start|>assistant\n"
