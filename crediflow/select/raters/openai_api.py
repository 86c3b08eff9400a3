"""`OpenAIRater`: asks any OpenAI-compatible chat endpoint for `{"score": N}`, with
bounded concurrency, retries and a cache."""

from __future__ import annotations

import concurrent.futures as futures
import email.utils
import http.client
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import numpy as np

from crediflow.core.validation import check_strings
from crediflow.data.cache import RatingCache
from crediflow.errors import InputError
from crediflow.select.raters.base import (
    DEFAULT_SCORES,
    RaterError,
    Ratings,
    check_scores,
    one_hot,
    positive,
    unique_texts,
)
from crediflow.select.raters.prompts import DEFAULT_JSON_TEMPLATE, check_template

_FLUSH_EVERY = 256  # answers between cache writes in OpenAIRater, so a crash loses little
_MAX_RETRY_AFTER = 60.0  # seconds: cap on a server's Retry-After



class _AnswerError(ValueError):
    """The endpoint answered, but not with a usable score."""


class _FatalError(Exception):
    """A failure that retrying cannot fix (bad key, bad request): stop the run."""


class _Skipped(Exception):
    """The text was not sent because the run had been stopped."""


_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_OBJECT = re.compile(r"\{[^{}]*\}")
_BARE_INT = re.compile(r"^\s*([+-]?\d+)\s*\.?\s*$")


def parse_score(answer: str, scores: Sequence[int] = DEFAULT_SCORES) -> int:
    """The score in a model's answer: JSON `{"score": N}` (also inside prose or a code fence)
    or a bare integer. Raises ValueError when there is none or it is not one of `scores`."""
    text = _FENCE.sub("", answer.strip())
    value: Any = None
    bare = _BARE_INT.match(text)
    if bare:
        value = int(bare.group(1))
    else:
        match = _OBJECT.search(text)
        if match:
            try:
                obj = json.loads(match.group())
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                value = next((v for k, v in obj.items() if str(k).lower() == "score"), None)
    if isinstance(value, str) and _BARE_INT.match(value):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _AnswerError(f"unparseable answer {answer[:80]!r}")
    if value not in scores:
        raise _AnswerError(f"score {value} is not one of {tuple(scores)}")
    return value


class OpenAIRater:
    """Rate texts with any OpenAI-compatible chat endpoint (POST {base_url}/chat/completions).

    The model is asked for `{"score": N}` (a bare integer is accepted too). Requests run on a
    thread pool of `concurrency`; connection errors, HTTP 5xx and 429, and unusable answers are
    retried `retries` times with exponential backoff (`backoff`, 2×`backoff`, ...; a 429's
    Retry-After is honoured). Other HTTP 4xx errors, and an endpoint that stays unreachable,
    stop the run. Any text still unrated raises `RaterError`; answers obtained before that are
    kept in the cache. The API key is read from `api_key_env` (optional: local servers often
    need none). `probs` are one-hot.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        template: str = DEFAULT_JSON_TEMPLATE,
        scores: Sequence[int] = DEFAULT_SCORES,
        concurrency: int = 4,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 30.0,
        cache: RatingCache | None = None,
        max_tokens: int | None = 16,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise InputError(f"base_url must start with http:// or https://, got {base_url!r}",
                             field="base_url")
        if not model:
            raise InputError("the endpoint's model name is empty", field="model")
        check_template(template)
        if concurrency < 1:
            raise InputError(f"concurrency must be >= 1, got {concurrency}", field="concurrency")
        if retries < 0:
            raise InputError(f"retries must be >= 0, got {retries}", field="retries")
        positive(backoff, "backoff", allow_zero=True)
        positive(timeout, "timeout")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.template, self.scores = model, template, check_scores(scores)
        self.concurrency, self.retries, self.backoff = concurrency, retries, backoff
        self.timeout, self.cache, self.max_tokens = timeout, cache, max_tokens
        self._api_key = os.environ.get(api_key_env) or None

    @property
    def scope(self) -> str:
        """Everything besides the text that changes a rating: the cache scope."""
        return json.dumps({"rater": "openai", "url": self.url, "model": self.model,
                           "template": self.template, "scores": self.scores}, sort_keys=True)

    def rate(self, texts: Sequence[str]) -> Ratings:
        """Ratings of `texts`; cached ones are not requested again, duplicates once."""
        texts = check_strings(texts)
        codes, uniques = unique_texts(texts)
        keys = self.cache.keys(uniques, scope=self.scope) if self.cache is not None else None
        if keys is not None:
            found, _, argmax, _ = self.cache.lookup(keys)
        else:
            found, argmax = np.zeros(len(uniques), bool), np.full(len(uniques), -1, np.int64)
        todo = np.flatnonzero(~found)
        failures, reason = self._request_all([uniques[i] for i in todo], todo, argmax, keys)
        if failures:
            kept = (f"; the {len(todo) - failures} answers obtained are cached"
                    if self.cache is not None else "")
            raise RaterError(f"{failures} of {len(todo)} texts could not be rated by {self.url} "
                             f"(model {self.model}) after {self.retries} retries; last reason: "
                             f"{reason}{kept}", failed=failures, reason=reason)
        argmax = argmax[codes]
        return Ratings(argmax.astype(np.float64), argmax, one_hot(argmax, self.scores),
                       from_cache=found[codes])

    def _request_all(
        self, texts: list[str], rows: np.ndarray, argmax: np.ndarray, keys: np.ndarray | None
    ) -> tuple[int, str]:
        """Rate `texts` into `argmax[rows]`; (number of failures, last failure reason)."""
        if not texts:
            return 0, ""
        stop = threading.Event()
        pending: list[int] = []
        failures, skipped, streak, reason = 0, 0, 0, ""

        def flush() -> None:
            if keys is not None and pending:
                done = rows[pending]
                self.cache.put_keys(keys[done], argmax[done].astype(np.float64),
                                    argmax=argmax[done])
            pending.clear()

        pool = futures.ThreadPoolExecutor(max_workers=self.concurrency,
                                          thread_name_prefix="crediflow-rater")
        try:
            jobs = {pool.submit(self._rate_one, text, stop): i for i, text in enumerate(texts)}
            for job in futures.as_completed(jobs):
                i = jobs[job]
                try:
                    argmax[rows[i]] = job.result()
                    pending.append(i)
                    streak = 0
                except _Skipped:
                    failures, skipped = failures + 1, skipped + 1
                except (_AnswerError, _TransportError, _FatalError) as exc:
                    failures, reason = failures + 1, str(exc)
                    streak = streak + 1 if isinstance(exc, _TransportError) else 0
                    # HTTP errors on several texts in a row: the endpoint is unusable (the
                    # workers themselves stop on refused requests and lost connections).
                    if streak >= max(3, self.concurrency):
                        stop.set()
                if len(pending) >= _FLUSH_EVERY:
                    flush()
        finally:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            flush()
        if skipped:
            reason = f"{reason} ({skipped} not attempted after that)"
        return failures, reason

    def _rate_one(self, text: str, stop: threading.Event) -> int:
        """The score of one text, retried; raises _AnswerError, _TransportError or _FatalError."""
        body = json.dumps({
            "model": self.model,
            "messages": [{"role": "user", "content": self.template.format(text=text)}],
            "temperature": 0,
            **({"max_tokens": self.max_tokens} if self.max_tokens else {}),
        }).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if stop.is_set():
                raise _Skipped()
            wait = 0.0
            try:
                return parse_score(self._post(body, headers), self.scores)
            except _FatalError:
                stop.set()  # set here, not by the caller, so that no other text is sent
                raise
            except _RetryAfter as exc:
                error, wait = exc, exc.seconds
            except (_AnswerError, _TransportError) as exc:
                error = exc
            if attempt < self.retries:
                delay = self.backoff * 2**attempt * (1 + 0.25 * random.random())
                stop.wait(max(delay, wait))
        if type(error) is _TransportError:
            stop.set()  # no connection after every retry: the endpoint is down
        raise error if error is not None else RaterError("no attempt was made")

    def _post(self, body: bytes, headers: dict[str, str]) -> str:
        """The assistant message of one chat completion request."""
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = _body_excerpt(exc)
            if exc.code == 429 or exc.code >= 500:
                raise _RetryAfter(f"HTTP {exc.code} {detail}",
                                  _retry_after(exc.headers.get("Retry-After"))) from exc
            raise _FatalError(f"HTTP {exc.code} {detail}") from exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            why = getattr(exc, "reason", None) or exc
            raise _TransportError(f"cannot reach the endpoint: {why}") from exc
        try:
            message = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise _AnswerError(f"malformed response {raw[:120]!r}") from exc
        if not isinstance(message, str):
            raise _AnswerError(f"no text in the response {raw[:120]!r}")
        return message


class _TransportError(Exception):
    """The request did not get an answer (connection failure, timeout, 5xx, 429)."""


class _RetryAfter(_TransportError):
    """HTTP 5xx or 429, with the server's requested wait in seconds (0 if none)."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date), capped."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 0.0
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


def _body_excerpt(exc: urllib.error.HTTPError) -> str:
    """The start of an HTTP error's body, for the message."""
    try:
        return exc.read()[:200].decode("utf-8", "replace").strip()
    except OSError:
        return ""
