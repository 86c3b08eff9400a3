"""Layer pruning: selectors pick the layers they should, pruned models are whole models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crediflow.errors import ConfigError, InputError
from crediflow.models.sft import IGNORE, TokenizedSFT
from crediflow.prune import (
    PruneConfig,
    decoder_layers,
    head_is_tied,
    layers_to_remove,
    prune,
    trainable_for_partial,
    untie_head,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 48


def _llama(layers: int = 6, *, tied: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, initializer_range=0.3,
                         tie_word_embeddings=tied, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def _identity(model, index: int) -> None:
    """Make layer `index` add nothing to the residual stream."""
    layer = decoder_layers(model)[index]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def _calibration(model, records: int = 6, length: int = 12) -> TokenizedSFT:
    """Random tokens labelled with the model's own greedy predictions (so the full model
    fits them well and skipping a working layer raises the loss)."""
    rng = np.random.default_rng(1)
    ids = rng.integers(1, VOCAB, size=(records, length))
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids)).logits
    labels = np.full_like(ids, IGNORE)
    labels[:, 1:] = logits[:, :-1].argmax(-1).numpy()
    offsets = np.arange(records + 1, dtype=np.int64) * length
    return TokenizedSFT(ids.reshape(-1).astype(np.int64), labels.reshape(-1).astype(np.int64),
                        offsets, np.arange(records, dtype=np.int64))


def test_reverse_removes_the_last_layers():
    model = _llama()
    assert layers_to_remove(model, PruneConfig(ratio=1 / 3)) == [4, 5]
    assert layers_to_remove(model, PruneConfig(count=1)) == [5]
    assert layers_to_remove(model, PruneConfig(count=5)) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(("values", "key", "words"), [
    ({"ratio": 0.01}, "ratio", "removes no layer"), ({"ratio": 0.95}, "ratio", "every layer"),
    ({"count": 6}, "count", "every layer")])
def test_removing_no_layer_or_every_layer_is_refused(values, key, words):
    with pytest.raises(ConfigError, match=words) as info:
        layers_to_remove(_llama(), PruneConfig(**values))
    assert (info.value.section, info.value.key) == ("prune", key)


def test_random_is_seeded():
    model = _llama()
    first = layers_to_remove(model, PruneConfig(selector="random", count=2, seed=3))
    assert first == layers_to_remove(model, PruneConfig(selector="random", count=2, seed=3))
    assert len(first) == 2 and first == sorted(first)
    draws = {tuple(layers_to_remove(model, PruneConfig(selector="random", count=2, seed=s)))
             for s in range(8)}
    assert len(draws) > 1


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_magnitude_picks_the_zeroed_layer(norm):
    model = _llama()
    with torch.no_grad():
        for p in decoder_layers(model)[2].parameters():
            p.zero_()
    assert layers_to_remove(model, PruneConfig(selector="magnitude", norm=norm, count=1)) == [2]


def test_taylor_picks_the_zeroed_layer():
    model = _llama()
    with torch.no_grad():
        for p in decoder_layers(model)[3].parameters():
            p.zero_()
    calib = _calibration(model)
    assert layers_to_remove(model, PruneConfig(selector="taylor", count=1),
                            calibration=calib) == [3]
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("selector", ["block_influence", "perplexity"])
def test_calibrated_selectors_pick_the_identity_layer(selector):
    model = _llama()
    _identity(model, 1)
    calib = _calibration(model)
    assert layers_to_remove(model, PruneConfig(selector=selector, count=1),
                            calibration=calib) == [1]


def test_calibrated_selector_needs_records():
    with pytest.raises(InputError, match="calibration"):
        layers_to_remove(_llama(), PruneConfig(selector="perplexity"))


def test_pruning_an_identity_layer_keeps_the_logits(tmp_path):
    from transformers import LlamaForCausalLM

    model = _llama()
    _identity(model, 2)
    pruned = prune(model, [2])
    assert pruned is not model and not pruned.training
    assert len(decoder_layers(pruned)) == 5 and len(decoder_layers(model)) == 6
    assert pruned.config.num_hidden_layers == 5 and model.config.num_hidden_layers == 6
    assert [layer.self_attn.layer_idx for layer in decoder_layers(pruned)] == list(range(5))
    ids = torch.randint(1, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = pruned(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

    pruned.save_pretrained(tmp_path / "pruned")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert reloaded.config.num_hidden_layers == 5
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, got, atol=1e-6, rtol=0)

    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    cached = pruned.generate(ids[:1], use_cache=True, **kwargs)
    uncached = pruned.generate(ids[:1], use_cache=False, **kwargs)
    assert cached.shape == (1, 16)
    assert torch.equal(cached, uncached)


def test_pruned_model_equals_the_original_with_those_layers_skipped():
    model = _llama()
    remove = [1, 4]
    pruned = prune(model, remove)

    def skip(_module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    layer_params = [sum(p.numel() for p in decoder_layers(model)[i].parameters())
                    for i in remove]
    assert (sum(p.numel() for p in model.parameters())
            - sum(p.numel() for p in pruned.parameters())) == sum(layer_params)
    handles = [decoder_layers(model)[i].register_forward_hook(skip, with_kwargs=True)
               for i in remove]
    ids = torch.randint(1, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        skipped = model(input_ids=ids).logits
        for handle in handles:
            handle.remove()
        full = model(input_ids=ids).logits
        got = pruned(input_ids=ids).logits
    torch.testing.assert_close(got, skipped, atol=1e-5, rtol=0)
    assert not torch.allclose(got, full, atol=1e-3)  # the removed layers did matter


def test_llama_3_1_8b_partial_trainable_count_by_formula():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                         tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    params = dict(model.named_parameters())
    names = trainable_for_partial(model, 3)
    one_layer = sum(p.numel() for p in decoder_layers(model)[0].parameters())
    assert one_layer == 218_112_000
    assert sum(params[n].numel() for n in names) == 1_179_676_672


def test_untie_head_keeps_the_embeddings_out_of_partial_training(tmp_path):
    from transformers import LlamaForCausalLM

    model = _llama(tied=True)
    assert head_is_tied(model)
    ids = torch.randint(1, VOCAB, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    untie_head(model)
    assert not head_is_tied(model)
    names = trainable_for_partial(model, 1)
    assert "lm_head.weight" in names and "model.embed_tokens.weight" not in names
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before)
        model.lm_head.weight.add_(1.0)
    model.save_pretrained(tmp_path / "untied")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "untied")
    assert not head_is_tied(reloaded)
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight)


def test_recovery_settings_follow_the_section():
    from crediflow.models.training import TrainSettings

    base = TrainSettings(learning_rate=1e-4, batch_size=2)
    partial = PruneConfig().recovery_settings(base, ("lm_head.weight",))
    assert (partial.learning_rate, partial.epochs, partial.lora, partial.trainable,
            partial.batch_size) == (1e-5, 2, False, ("lm_head.weight",), 2)
    lora = PruneConfig(finetune="lora").recovery_settings(base, ("lm_head.weight",))
    assert lora.lora and lora.trainable == () and lora.lora_r == 8
    assert PruneConfig(finetune="none").recovery_settings(base) is None
    with pytest.raises(ConfigError, match="'max_steps'"):
        PruneConfig(max_steps=0).recovery_settings(base)


def test_prune_mistral():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2)).eval()
    pruned = prune(model, layers_to_remove(model, PruneConfig()))
    assert type(pruned) is MistralForCausalLM and pruned.config.num_hidden_layers == 3
    ids = torch.randint(1, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(pruned.generate(ids, use_cache=True, **kwargs),
                       pruned.generate(ids, use_cache=False, **kwargs))


def test_prune_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4,
                                       n_positions=64)).eval()
    assert len(decoder_layers(model)) == 4
    pruned = prune(model, [0, 3])
    assert pruned.config.n_layer == 2 and len(decoder_layers(pruned)) == 2
    torch.testing.assert_close(decoder_layers(pruned)[0].mlp.c_fc.weight,
                               decoder_layers(model)[1].mlp.c_fc.weight)
    ids = torch.randint(1, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    out = pruned.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True,
                          pad_token_id=0)
    assert out.shape == (1, 9)


def test_prune_refuses_missing_layers():
    with pytest.raises(InputError, match="layer 6"):
        prune(_llama(), [6])
    with pytest.raises(InputError, match="every"):
        prune(_llama(2), [0, 1])


def test_unknown_model_class():
    with pytest.raises(InputError, match="Linear"):
        decoder_layers(torch.nn.Linear(2, 2))
    with pytest.raises(InputError, match="Linear"):
        layers_to_remove(torch.nn.Linear(2, 2), PruneConfig())


def test_trainable_for_partial():
    model = _llama()
    names = trainable_for_partial(model, 2)
    assert "lm_head.weight" in names and "model.norm.weight" in names
    assert any(n.startswith("model.layers.5.") for n in names)
    assert any(n.startswith("model.layers.4.") for n in names)
    assert not any(n.startswith("model.layers.3.") for n in names)
    assert "model.embed_tokens.weight" not in names
    assert "model.layers.4.self_attn.q_proj.weight" in names
    tied = _llama(tied=True)
    tied_names = trainable_for_partial(tied, 0)
    assert "model.embed_tokens.weight" in tied_names
    assert not any(n.startswith("model.layers.") for n in tied_names)


@pytest.mark.parametrize(("key", "value"), [("ratio", 0.0), ("ratio", 1.0), ("count", 0),
                                            ("selector", "largest"), ("norm", "l3"),
                                            ("trainable_last", -1),
                                            ("calibration_records", 0)])
def test_bad_config_names_the_key(key, value):
    with pytest.raises(ConfigError, match=repr(key)):
        PruneConfig.from_mapping({key: value})


def test_config_defaults():
    config = PruneConfig()
    assert (config.selector, config.ratio, config.count, config.norm) == (
        "reverse", 0.25, None, "l1")
    assert (config.trainable_last, config.calibration_records, config.seed) == (3, 32, 0)
    assert all(info["help"] for info in PruneConfig.describe().values())


def test_prune_qwen2_cuts_per_layer_config():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    model = Qwen2ForCausalLM(config).eval()
    pruned = prune(model, layers_to_remove(model, PruneConfig(count=1)))
    assert pruned.config.num_hidden_layers == 3
    if getattr(pruned.config, "layer_types", None) is not None:
        assert len(pruned.config.layer_types) == 3
    ids = torch.randint(1, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    assert pruned.generate(ids, max_new_tokens=3, do_sample=False, use_cache=True,
                           pad_token_id=0).shape == (1, 8)
