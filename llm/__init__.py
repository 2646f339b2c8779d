"""The generation service: OpenAI-compatible chat and completions on llama.cpp, CPU only.

The model is the GGUF that the configured alias points to in the model registry; it is
downloaded, checked against its manifest's sha256 and cached before it is ever loaded.
"""
