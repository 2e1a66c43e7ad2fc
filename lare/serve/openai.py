"""The OpenAI chat-completions format, read strictly: a request becomes one (image, question) for model.answer, or a
RequestError with the HTTP status and the OpenAI error body; an Answer becomes a chat.completion with LaRe's extras
(the token account, latency, and per latent step the refocus map and its top regions) under `lare`.

Request, as OpenAI clients send it:
    {"model": "...", "max_tokens": 16,
     "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
                                               {"type": "text", "text": "What colour is the star?"}]}],
     "lare": {"choices": ["red", "blue"], "refocus": true}}
One user message is the question: its text parts joined, exactly one image (a data: URL, or a path under the
server's image root). Sampling is greedy: temperature 0 (or absent), n 1, no streaming. A system (or developer)
message with any text, an earlier turn, or a second user message is refused rather than dropped: the model answers
one question about one image with the prompt it was fine-tuned on, and a server that silently ignored the client's
instructions or history would return an answer to a request the client did not make.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lare.model import Answer

TOP_LEVEL = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream", "user",
             "lare"}
LARE_OPTIONS = {"choices", "refocus"}


class RequestError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


@dataclass
class Limits:
    max_tokens: int = 64            # the largest generation budget a request may ask for
    max_image_bytes: int = 8 << 20  # an encoded image
    max_pixels: int = 4096 * 4096   # a decoded image (a small file may decode to a huge one: a decompression bomb)
    image_root: str = ""            # images may also be read by path from under this folder ('' = never by path)


@dataclass
class ChatRequest:
    image: bytes
    question: str
    choices: list[str] = field(default_factory=list)
    max_tokens: int | None = None
    refocus: bool = True


def parse_chat_request(body, limits: Limits) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - TOP_LEVEL)
    if unknown:
        raise RequestError(400, f"unknown fields: {', '.join(unknown)}", unknown[0])
    if body.get("stream"):
        raise RequestError(400, "stream is not supported: the answer comes whole", "stream")
    if body.get("n", 1) != 1:
        raise RequestError(400, "n must be 1", "n")
    if body.get("temperature") not in (None, 0, 0.0):
        raise RequestError(400, "sampling is greedy: temperature must be 0 or absent", "temperature")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or not 1 <= max_tokens <= limits.max_tokens):
        raise RequestError(400, f"max_tokens must be an integer from 1 to {limits.max_tokens}", "max_tokens")
    extras = body.get("lare") or {}
    if not isinstance(extras, dict) or set(extras) - LARE_OPTIONS:
        raise RequestError(400, f"lare: an object with the fields {sorted(LARE_OPTIONS)}", "lare")
    choices = extras.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise RequestError(400, "lare.choices must be a list of non-empty strings", "lare.choices")

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "messages")
    texts, images = _parts(_the_user_message(messages).get("content"))
    question = "\n".join(t.strip() for t in texts if t.strip())
    if not question:
        raise RequestError(400, "the user message has no question text", "messages")
    if len(images) != 1:
        raise RequestError(400, f"the user message must hold exactly one image, it has {len(images)}", "messages")
    return ChatRequest(read_image(images[0], limits), question, choices, max_tokens, bool(extras.get("refocus", True)))


def _the_user_message(messages: list) -> dict:
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role in ("system", "developer"):
            texts, images = _parts(m.get("content"))
            if any(t.strip() for t in texts) or images:
                raise RequestError(400, f"messages[{i}]: {role} messages are not supported: the model answers with the "
                                        "prompt it was fine-tuned on; send an empty one or none", "messages")
        elif role not in ("user", "assistant", "tool"):
            raise RequestError(400, f"messages[{i}]: unknown role {role!r}", "messages")
    turns = [m for m in messages if m.get("role") in ("user", "assistant", "tool")]
    if not turns or turns[-1].get("role") != "user":
        raise RequestError(400, "no user message: the last message must be the user's question", "messages")
    if len(turns) > 1:
        raise RequestError(400, "one question per request: the model keeps no conversation, so earlier turns "
                                "would be ignored; send the question as the only user message", "messages")
    return turns[-1]


def _parts(content) -> tuple[list[str], list[str]]:
    if isinstance(content, str):
        return [content], []
    if not isinstance(content, list):
        raise RequestError(400, "message content must be a string or a list of parts", "messages")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url:
                raise RequestError(400, "image_url needs a url", "messages")
            images.append(url)
        else:
            raise RequestError(400, f"unsupported content part {kind!r} (text and image_url are)", "messages")
    return texts, images


def read_image(url: str, limits: Limits) -> bytes:
    """The encoded bytes of an image given as a data: URL or a path under the image root, checked to decode to an
    image within the limits (its header only: the pixels are not decoded here)."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise RequestError(400, "a data: URL image must be base64", "messages")
        if len(payload) * 3 // 4 > limits.max_image_bytes:
            raise RequestError(413, f"the image is over {limits.max_image_bytes} bytes", "messages")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "the data: URL is not valid base64", "messages") from None
    else:
        data = _read_under_root(url, limits)
    if len(data) > limits.max_image_bytes:
        raise RequestError(413, f"the image is over {limits.max_image_bytes} bytes", "messages")
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header: the size before any pixel is decoded
            width, height = im.size
    except Image.DecompressionBombError as e:
        raise RequestError(413, f"the image decodes to too many pixels ({e})", "messages") from None
    except (OSError, ValueError):
        raise RequestError(400, "not an image (PNG, JPEG, WebP, ... expected)", "messages") from None
    if width * height > limits.max_pixels:
        raise RequestError(413, f"the image is {width}x{height} pixels, over the limit of {limits.max_pixels}",
                           "messages")
    return data


def _read_under_root(url: str, limits: Limits) -> bytes:
    path = url[len("file://"):] if url.startswith("file://") else url
    if "://" in path or not limits.image_root:
        raise RequestError(400, "an image must be a data: URL" + (" or a path under the server's image root"
                                                                 if limits.image_root else ""), "messages")
    root = os.path.realpath(limits.image_root)
    full = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root:
        raise RequestError(403, "the image path is outside the server's image root", "messages")
    if not os.path.isfile(full):
        raise RequestError(404, f"no image {path!r} under the server's image root", "messages")
    if os.path.getsize(full) > limits.max_image_bytes:
        raise RequestError(413, f"the image is over {limits.max_image_bytes} bytes", "messages")
    return Path(full).read_bytes()


def chat_response(answer: Answer, model_name: str, refocus: bool = True) -> dict:
    """The chat.completion of one answer; usage counts prompt = visual + prompt text (+ latent and crop tokens, which
    the model also read), completion = generated."""
    t = answer.tokens
    lare = {"answer": answer.answer, "text": answer.text, "tokens": t, "latency_s": answer.latency_s,
            "refocus": [vars(s) for s in answer.refocus] if refocus else [], "boxes": answer.boxes}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": t["total"] - t["generated"], "completion_tokens": t["generated"],
                  "total_tokens": t["total"]},
        "lare": lare,
    }
