"""What the llm site (FastV, PyramidDrop, DART, SparseVLM) relies on in transformers' stock decoder layers, and its
attention ranking against the stock eager attention, QK-norm included (a Qwen3-style layer)."""

import pytest
import torch
from torch import nn
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RotaryEmbedding

from vlm_eff.errors import ConfigError
from vlm_eff.reduction.llm import check_decoder_layer, last_token_attention
from vlm_eff.reduction.sparsevlm import rows_attention
from vlm_eff.vlms import layout_of


@pytest.mark.parametrize("name", ["llava_tiny", "onevision_tiny", "qwen2_vl_tiny"])
def test_every_layout_decoder_layer_has_what_the_llm_site_uses(tiny_vlms, name):
    """Fails on a transformers upgrade that renames a keyword, a projection or the rotary function."""
    model = tiny_vlms[name]
    for layer in layout_of(model).language_model(model).layers:
        check_decoder_layer(layer)


def test_a_layer_missing_a_part_is_a_one_line_error(tiny_vlms):
    model = tiny_vlms["llava_tiny"]
    layer = layout_of(model).language_model(model).layers[0]

    class Renamed(nn.Module):  # a decoder layer whose forward and attention were renamed by an upgrade
        def __init__(self):
            super().__init__()
            self.input_layernorm, self.self_attn = layer.input_layernorm, nn.Module()
            self.self_attn.q_proj = layer.self_attn.q_proj

        def forward(self, hidden_states, attention_mask=None, past_key_values=None, position_embeddings=None):
            return hidden_states

    with pytest.raises(ConfigError) as error:
        check_decoder_layer(Renamed())
    message = str(error.value)
    assert "\n" not in message
    for missing in ("position_ids=", "cache=", "self_attn.k_proj", "self_attn.head_dim", "self_attn.scaling"):
        assert missing in message


def qwen3_layer():
    """A tiny Qwen3 decoder layer (grouped-query attention with q_norm / k_norm), random weights with non-trivial norm
    scales (a unit scale would hide a missing norm less well), eager attention."""
    config = Qwen3Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, num_hidden_layers=1, vocab_size=32, attn_implementation="eager")
    torch.manual_seed(0)
    layer = Qwen3DecoderLayer(config, layer_idx=0).eval()
    with torch.no_grad():
        for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm, layer.input_layernorm):
            norm.weight.uniform_(0.2, 3.0)
    return layer, Qwen3RotaryEmbedding(config)


def eager_attention(layer, hidden, position_embeddings, mask):
    """The stock attention module's own post-softmax weights [B, H, T, T] (eager)."""
    with torch.no_grad():
        _, weights = layer.self_attn(layer.input_layernorm(hidden), position_embeddings, mask)
    return weights


def test_last_token_attention_matches_stock_eager_attention_with_qk_norm():
    layer, rope = qwen3_layer()
    check_decoder_layer(layer)
    B, T = 2, 12
    hidden = torch.randn(B, T, 64)
    position_embeddings = rope(hidden, torch.arange(T).expand(B, T))
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :3] = False  # the second row left-padded
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    mask = torch.zeros(B, 1, T, T).masked_fill(~(causal & valid[:, None, :])[:, None], torch.finfo(torch.float32).min)
    reference = eager_attention(layer, hidden, position_embeddings, mask)[:, :, -1].mean(dim=1)  # [B, T]
    with torch.no_grad():
        ours = last_token_attention(layer, hidden, position_embeddings, valid)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # without the norms the ranking differs: the test can fail
        layer.self_attn.q_norm.weight.fill_(1.0)
    assert not torch.allclose(ours, last_token_attention(layer, hidden, position_embeddings, valid), atol=1e-3)


def test_sparsevlm_rows_attention_matches_stock_eager_attention_with_qk_norm():
    layer, rope = qwen3_layer()
    T = 10
    hidden = torch.randn(1, T, 64)
    cos, sin = rope(hidden, torch.arange(T)[None])
    mask = torch.zeros(1, 1, T, T).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), torch.finfo(torch.float32).min)
    reference = eager_attention(layer, hidden, (cos, sin), mask)[0].mean(dim=0)  # [T, T]
    queries = torch.tensor([4, 7, 9])
    with torch.no_grad():
        ours = rows_attention(layer, hidden[0], (cos[0], sin[0]), queries, torch.ones(T, dtype=torch.bool))
    torch.testing.assert_close(ours, reference[queries], atol=1e-6, rtol=1e-5)
