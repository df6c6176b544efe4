"""Named GPT-2 sizes (``model.size``), importable without torch so that a config is validated
before torch loads. CPU sizes keep the output layer small relative to the body."""

SIZES = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64),
    "small-cpu": dict(n_layer=4, n_head=4, n_embd=128),
    "medium-cpu": dict(n_layer=6, n_head=4, n_embd=256),
    "tiny-x10": dict(n_layer=6, n_head=6, n_embd=192),         # ~10x tiny's parameters (transfer check)
    "gpu-small": dict(n_layer=8, n_head=8, n_embd=512),        # 25M + embeddings (GPU evidence)
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),           # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),   # 350M
}
