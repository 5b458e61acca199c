"""DiT Studio engine: registry, families, generation and methods. Never imports gradio."""

from studio import gpu as _gpu  # noqa: F401  (imports `spaces` before torch touches CUDA)
