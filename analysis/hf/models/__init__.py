"""Model families in Flax NNX with Hugging Face parameter names and layouts: Llama-style decoders
(Llama-3, Mistral, Qwen2, Qwen3, Phi-3), Gemma-2 and Gemma-3 text decoders, and the CLIP vision tower."""

from analysis.hf.models.clip import CLIPVisionConfig as CLIPVisionConfig
from analysis.hf.models.clip import CLIPVisionModelWithProjection as CLIPVisionModelWithProjection
from analysis.hf.models.gemma import GemmaConfig as GemmaConfig
from analysis.hf.models.gemma import GemmaForCausalLM as GemmaForCausalLM
from analysis.hf.models.llama import LlamaConfig as LlamaConfig
from analysis.hf.models.llama import LlamaForCausalLM as LlamaForCausalLM
