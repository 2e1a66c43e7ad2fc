"""Which chat messages the server accepts: one question about one image, nothing the model would silently drop."""

import base64

import pytest

from lare.serve.openai import Limits, RequestError, parse_chat_request
from tests.helpers import png_bytes


def user(text: str) -> dict:
    url = "data:image/png;base64," + base64.b64encode(png_bytes(32, 32)).decode()
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}


def test_an_empty_system_message_is_accepted_and_the_user_message_is_the_question():
    for system in ({"role": "system", "content": ""}, {"role": "developer", "content": [{"type": "text", "text": " "}]}):
        request = parse_chat_request({"messages": [system, user("What colour is the star?")]}, Limits())
        assert request.question == "What colour is the star?"


@pytest.mark.parametrize("messages, words", [
    ([{"role": "system", "content": "Answer in French."}, user("Which?")], "messages[0]: system messages are not supported"),
    ([user("Which?"), {"role": "assistant", "content": "red"}, user("And the square?")], "one question per request"),
    ([user("Which?"), {"role": "assistant", "content": "red"}], "the last message must be the user's question"),
    ([{"role": "narrator", "content": "x"}, user("Which?")], "messages[0]: unknown role 'narrator'"),
    (["not a message", user("Which?")], "messages[0]: unknown role None"),
])
def test_instructions_or_history_the_model_would_ignore_are_refused(messages, words):
    with pytest.raises(RequestError) as e:
        parse_chat_request({"messages": messages}, Limits())
    assert e.value.status == 400 and words in e.value.message
