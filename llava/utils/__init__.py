"""Small shared utilities.

``llava.utils.openai_client``: the OpenAI-compatible chat client with retries and a reply cache
(used by the GPT-assisted reviews and the instruction-data generator).
"""


def disable_torch_init() -> None:
    """Skip the random initialisation of Linear and LayerNorm weights (the original's speed-up before
    loading a checkpoint). Kept for scripts that call it; loading through ``from_pretrained`` does not
    need it. It changes ``torch.nn`` for the whole process: call it only in inference scripts.
    """
    import torch

    torch.nn.Linear.reset_parameters = lambda self: None
    torch.nn.LayerNorm.reset_parameters = lambda self: None
