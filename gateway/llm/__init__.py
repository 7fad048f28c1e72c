"""The LLM path: the OpenAI-compatible routes (chat, embeddings, models, the Responses
API with its tenant-bound stored responses, legacy completions, moderations, images and
audio) and the Tavily-compatible search routes, the model router that turns a model name
into the backends serving the API asked for and its fallbacks (which failure falls over
to which), the SSE and byte relays that never let an answer end silently, the
continuation that finishes a stream cut mid-answer on another call, the streamed
multipart upload, and the usage (tokens, audio, images) taken from the providers' answers.

May import `gateway.config`, `gateway.errors`, `gateway.routing`, `gateway.ops`,
`gateway.resilience` (guards and the backend registry), `gateway.state`, `gateway.edge`
(the request's principal and id, body reading), `gateway.cache` and `backends.base`.
Nothing imports it but the app factory.
"""
