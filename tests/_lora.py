"""LoRA helpers shared by the trainer tests."""

import torch


def randomise_lora(model, seed=0):
    """Give every ``lora_B`` random values. B starts at zero (a no-op adapter), which would leave A without
    gradient; random B makes every LoRA weight take part in a comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
