"""A LLaMA-style causal LM from a small config (no download): grouped-query attention,
RMSNorm, SwiGLU, the KV cache on as by default.

    slimc prune examples/hf_llama/model.py --ratio 0.5 -o llama_masks.pth
    slimc compile examples/hf_llama/model.py --masks llama_masks.pth -o out/llama
    python -c "import transformers; m = transformers.AutoModelForCausalLM.from_pretrained('out/llama/hf'); ..."
"""
import torch
import transformers

config = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                  num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
torch.manual_seed(0)
model = transformers.LlamaForCausalLM(config).eval()
example_inputs = {"input_ids": torch.randint(0, 256, (2, 16))}
