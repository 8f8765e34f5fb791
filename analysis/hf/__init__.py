"""Hugging Face checkpoints: the safetensors reader and writer, the Flax NNX model families whose
parameter paths are the HF tensor names, and loading / saving whole checkpoint directories.

- :mod:`~analysis.hf.safetensors_file`: headers and tensors of ``.safetensors`` files.
- :mod:`~analysis.hf.models`: Llama / Mistral / Qwen2 and Gemma-2 / Gemma-3 text decoders and the CLIP
  vision tower.
- :mod:`~analysis.hf.checkpoints`: ``load``, ``load_pair``, ``load_adapter``, ``save``, ``from_config``.
- :mod:`~analysis.hf.hub`: ``resolve``: a directory, or a Hub id ``org/name[@revision]`` found in
  (or downloaded to) the local Hub cache.
- :mod:`~analysis.hf.adapters`: PEFT LoRA adapters as ``W_post = W_pre + scale · B A``, and their factored form.
"""
