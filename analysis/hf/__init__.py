"""Hugging Face checkpoints: the safetensors reader and writer, the Flax NNX model families whose
parameter paths are the HF tensor names, and loading / saving whole checkpoint directories.

- :mod:`~analysis.hf.safetensors_file`: headers and tensors of ``.safetensors`` files.
- :mod:`~analysis.hf.models`: Llama / Mistral / Qwen2 and Gemma-2 / Gemma-3 text decoders and the CLIP
  vision tower.
- :mod:`~analysis.hf.checkpoints`: ``load``, ``load_pair``, ``save``, ``from_config``.
"""
