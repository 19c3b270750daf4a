"""Hand-derived cuts of the zoo's transformers (slimc/zoo/transformer.py: ViT, BERT,
nanoGPT, LLaMA)."""
from __future__ import annotations

from torch import nn

from .cuts import Case, Cuts, _weight


def _head(h: int, d: int) -> range:
    """The rows (columns) of head ``h`` in a (heads · d) projection."""
    return range(h * d, (h + 1) * d)


def vit(m: nn.Module, attention: bool = True) -> Case:
    """timm ViT: qkv viewed as (3, heads, head_dim) at once, so a channel (h, d) of q, k and v
    is one group with proj's column (h, d); the residual stream's channel c is made by the
    patch conv, cls_token, pos_embed and every block's proj and fc2, and read by every
    norm, qkv, fc1 and the head. The class reshapes the heads' output to the stream's width
    (``reshape(B, N, C)``, C = x.shape[-1]): with heads or hidden channels cut it cannot run
    slim (``attention=False``: the FFN cut alone, which it can)."""
    c = Cuts(m)
    C, H = m.head.in_features, m.blocks[0].attn.num_heads
    D = C // H
    c.mask(_weight("blocks.1.mlp.fc1", 0, range(10)))
    c.remove(c.rows("blocks.1.mlp.fc1", range(10)), c.cols("blocks.1.mlp.fc2", range(10)))
    if not attention:
        return c.case
    head1 = _head(1, D)
    c.mask(_weight("blocks.0.attn.proj", 1, head1))  # head 1's output columns: the head goes
    c.remove(c.cols("blocks.0.attn.proj", head1), c.rows("blocks.0.attn.qkv", [i + k * C for k in range(3) for i in head1]))
    dim3 = [h * D + 3 for h in range(H)]  # head-dim channel 3 in every head
    c.mask(_weight("blocks.3.attn.proj", 1, dim3))
    c.remove(c.cols("blocks.3.attn.proj", dim3), c.rows("blocks.3.attn.qkv", [i + k * C for k in range(3) for i in dim3]))
    ch = 7
    c.mask(_weight("patch_embed.proj", 0, (ch,)), ("cls_token", 2, (ch,)), ("pos_embed", 2, (ch,)))
    c.remove(c.rows("patch_embed.proj", (ch,)), ("cls_token", 2, (ch,)), ("pos_embed", 2, (ch,)))
    for i in range(len(m.blocks)):
        b = f"blocks.{i}"
        c.mask(_weight(f"{b}.attn.proj", 0, (ch,)), _weight(f"{b}.mlp.fc2", 0, (ch,)))
        c.remove(c.norm(f"{b}.norm1", (ch,)), c.cols(f"{b}.attn.qkv", (ch,)), c.rows(f"{b}.attn.proj", (ch,)),
                 c.norm(f"{b}.norm2", (ch,)), c.cols(f"{b}.mlp.fc1", (ch,)), c.rows(f"{b}.mlp.fc2", (ch,)))
    c.remove(c.norm("norm", (ch,)), c.cols("head", (ch,)))
    c.no_user_class("Attention reshapes its output to the stream's width C = x.shape[-1], not heads · head_dim",
                    "failed to run")
    return c.case


def bert(m: nn.Module) -> Case:
    """HF BERT (post-LN): query/key/value Linears viewed as (heads, head_dim); the stream's
    channel c is made by the three embedding tables and every attention.output.dense and
    output.dense row, carried through every LayerNorm, read by query/key/value,
    intermediate.dense and the pooler."""
    c = Cuts(m)
    att = m.layer[0].attention.self
    D = att.attention_head_size
    head2 = _head(2, D)
    s = "layer.0.attention"
    c.mask(_weight(f"{s}.self.query", 0, head2))  # head 2's queries: the head is zero, it goes
    c.remove(*[c.rows(f"{s}.self.{w}", head2) for w in ("query", "key", "value")], c.cols(f"{s}.output.dense", head2))
    c.mask(_weight("layer.1.intermediate.dense", 0, range(16)))
    c.remove(c.rows("layer.1.intermediate.dense", range(16)), c.cols("layer.1.output.dense", range(16)))
    c.mask(_weight("pooler", 0, (3,)))
    c.remove(c.rows("pooler", (3,)), c.cols("classifier", (3,)))
    ch = 5
    emb = "embeddings"
    c.mask(*[_weight(f"{emb}.{t}_embeddings", 1, (ch,)) for t in ("word", "position", "token_type")])
    c.remove(*[_weight(f"{emb}.{t}_embeddings", 1, (ch,)) for t in ("word", "position", "token_type")],
             c.norm(f"{emb}.LayerNorm", (ch,)))
    for i in range(len(m.layer)):
        L = f"layer.{i}"
        c.mask(_weight(f"{L}.attention.output.dense", 0, (ch,)), _weight(f"{L}.output.dense", 0, (ch,)))
        c.remove(*[c.cols(f"{L}.attention.self.{w}", (ch,)) for w in ("query", "key", "value")],
                 c.rows(f"{L}.attention.output.dense", (ch,)), c.norm(f"{L}.attention.output.LayerNorm", (ch,)),
                 c.cols(f"{L}.intermediate.dense", (ch,)), c.rows(f"{L}.output.dense", (ch,)),
                 c.norm(f"{L}.output.LayerNorm", (ch,)))
    c.remove(c.cols("pooler", (ch,)))
    return c.case


def gpt(m: nn.Module, attention: bool = True) -> Case:
    """nanoGPT: c_attn split in q, k, v, each viewed as (heads, head_dim); lm_head is wte
    (tied: one parameter, transformer.wte.weight, a source and a sink of the stream). The
    class takes head_dim = C // n_head and views the heads' output as C, from the stream's
    width: with heads or hidden channels cut it cannot run slim (``attention=False``: the
    FFN cut alone)."""
    c = Cuts(m)
    C, H = m.transformer.wte.weight.shape[1], m.transformer.h[0].attn.n_head
    D = C // H
    c.mask(_weight("transformer.h.1.mlp.c_fc", 0, (1, 2)))
    c.remove(c.rows("transformer.h.1.mlp.c_fc", (1, 2)), c.cols("transformer.h.1.mlp.c_proj", (1, 2)))
    if not attention:
        return c.case
    head3 = _head(3, D)
    a = "transformer.h.0.attn"
    c.mask(_weight(f"{a}.c_proj", 1, head3))
    c.remove(c.cols(f"{a}.c_proj", head3), c.rows(f"{a}.c_attn", [i + k * C for k in range(3) for i in head3]))
    ch = 9
    c.mask(_weight("transformer.wte", 1, (ch,)), _weight("transformer.wpe", 1, (ch,)))
    c.remove(_weight("transformer.wte", 1, (ch,)), _weight("transformer.wpe", 1, (ch,)), c.norm("transformer.ln_f", (ch,)))
    for i in range(len(m.transformer.h)):
        b = f"transformer.h.{i}"
        c.mask(_weight(f"{b}.attn.c_proj", 0, (ch,)), _weight(f"{b}.mlp.c_proj", 0, (ch,)))
        c.remove(c.norm(f"{b}.ln_1", (ch,)), c.cols(f"{b}.attn.c_attn", (ch,)), c.rows(f"{b}.attn.c_proj", (ch,)),
                 c.norm(f"{b}.ln_2", (ch,)), c.cols(f"{b}.mlp.c_fc", (ch,)), c.rows(f"{b}.mlp.c_proj", (ch,)))
    c.no_user_class("CausalSelfAttention views its heads' output as the stream's width C = x.size(-1)",
                    "failed to run")
    return c.case


def llama(m: nn.Module) -> Case:
    """HF LLaMA: GQA (query head h reads key/value head h // (heads / kv_heads)), SwiGLU
    (down(silu(gate x) · up x): a masked gate row kills the product), RMSNorm γ followers."""
    c = Cuts(m)
    att = m.model.layers[0].self_attn
    D, g = att.head_dim, att.num_key_value_groups
    a = "model.layers.0.self_attn"
    c.mask(_weight(f"{a}.k_proj", 0, _head(1, D)))  # kv head 1's keys: it goes with query heads 1·g … 2·g-1
    q_rows = [i for h in range(g, 2 * g) for i in _head(h, D)]
    c.remove(c.rows(f"{a}.q_proj", q_rows), c.rows(f"{a}.k_proj", _head(1, D)), c.rows(f"{a}.v_proj", _head(1, D)),
             c.cols(f"{a}.o_proj", q_rows))
    f = "model.layers.1.mlp"
    c.mask(_weight(f"{f}.gate_proj", 0, range(8)))
    c.remove(c.rows(f"{f}.gate_proj", range(8)), c.rows(f"{f}.up_proj", range(8)), c.cols(f"{f}.down_proj", range(8)))
    ch = 11
    c.mask(_weight("model.embed_tokens", 1, (ch,)))
    c.remove(_weight("model.embed_tokens", 1, (ch,)), c.norm("model.norm", (ch,)), c.cols("lm_head", (ch,)))
    for i in range(len(m.model.layers)):
        L = f"model.layers.{i}"
        c.mask(_weight(f"{L}.self_attn.o_proj", 0, (ch,)), _weight(f"{L}.mlp.down_proj", 0, (ch,)))
        c.remove(c.norm(f"{L}.input_layernorm", (ch,)), c.norm(f"{L}.post_attention_layernorm", (ch,)),
                 *[c.cols(f"{L}.self_attn.{w}_proj", (ch,)) for w in "qkv"], c.rows(f"{L}.self_attn.o_proj", (ch,)),
                 *[c.cols(f"{L}.mlp.{w}_proj", (ch,)) for w in ("gate", "up")], c.rows(f"{L}.mlp.down_proj", (ch,)))
    return c.case
