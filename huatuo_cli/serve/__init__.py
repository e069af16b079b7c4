"""`huatuo serve`: an OpenAI-compatible HTTP API over one verified bundle (docs/serve.md).

`protocol` reads OpenAI chat-completion requests into what the answering path needs and writes the
responses and errors in OpenAI's shapes; `images` turns the data URLs of a request into the images
`huatuo ask` would show the model for the same files; `worker` is the one model behind a bounded
queue, answering in a worker thread through `answering.service.AnswerService`; `app` is the
Starlette application (routes, API key, body limit, notice header); `security` decides where the
server may listen and reads its key.
"""
