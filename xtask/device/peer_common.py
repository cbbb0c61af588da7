"""What the Python peers share (imported from the script's own folder, which Python puts on
sys.path when a peer runs as `python3 xtask/device/peer_*.py`)."""
import torch


def random_bf16(model_cls, cfg):
    """`model_cls(cfg)` with random weights, built in bfloat16 straight on the GPU (no float32
    copy on the host), and its parameter count. The default dtype is float32 again after."""
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        m = model_cls(cfg)
    torch.set_default_dtype(torch.float32)
    return m, sum(p.numel() for p in m.parameters())
