"""Grouped-query attention without copying heads (``plugins/backends/attention.py``): the
same output as transformers' ``sdpa`` attention, and the embedded model runs on it on CPU."""

from __future__ import annotations

import pytest

from reason.plugins.backends.attention import NAME, grouped_sdpa


@pytest.mark.parametrize("queries", [1, 5])
def test_grouped_sdpa_gives_transformers_sdpa_output_with_a_padding_mask(queries):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    torch.manual_seed(0)
    rows, heads, kv_heads, keys, dim = 3, 9, 3, 40, 16
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // kv_heads, True
    query = torch.randn(rows, heads, queries, dim)
    key, value = torch.randn(rows, kv_heads, keys, dim), torch.randn(rows, kv_heads, keys, dim)
    mask = torch.ones(rows, 1, queries, keys, dtype=torch.bool)
    mask[1, :, :, :12] = False  # a left-padded row
    mask[:, :, :, keys - queries :] &= torch.ones(queries, queries, dtype=torch.bool).tril()  # causal among new tokens
    want, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=dim**-0.5)
    got, _ = grouped_sdpa(module, query, key, value, mask, scaling=dim**-0.5)
    assert got.shape == want.shape == (rows, queries, heads, dim)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.model
def test_the_embedded_model_runs_grouped_attention_on_cpu():
    from reason.plugins.backends.models import load_model, resolve_model

    model = load_model(resolve_model("smollm2"), device="cpu")
    assert model.config._attn_implementation == NAME
    assert model.config.num_attention_heads != model.config.num_key_value_heads  # grouped: the copy it saves
