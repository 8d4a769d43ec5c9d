"""Drives Sting's /v1 API with the official `openai` package (run by tests/e2e/openai.rs)."""
import sys

import openai

base_url, token = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=token)

ids = [model.id for model in client.models.list()]
assert "fixture-chat" in ids, ids

messages = [{"role": "user", "content": "What is the capital of France?"}]
stream = client.chat.completions.create(
    model="fixture-chat", messages=messages, max_tokens=10, temperature=0, stream=True
)
streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
whole = client.chat.completions.create(model="fixture-chat", messages=messages, max_tokens=10, temperature=0)
assert whole.choices[0].message.content == streamed, (whole.choices[0].message.content, streamed)
assert whole.usage.completion_tokens == 10, whole.usage

embedding = client.embeddings.create(model="fixture-embed", input="bees make honey")
assert len(embedding.data[0].embedding) == 32

try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    raise AssertionError("an unknown model must fail")
except openai.NotFoundError as err:
    assert err.status_code == 404

print("openai client OK:", repr(streamed))
