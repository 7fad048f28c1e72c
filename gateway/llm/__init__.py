"""The LLM path: the OpenAI-compatible routes (chat, embeddings, models) and the
Tavily-compatible search routes, the model router that turns a model name into a backend
and its fallbacks (which failure falls over to which), the SSE relay that never lets a
stream end silently, the continuation that finishes a stream cut mid-answer on another
call, and the usage (tokens) taken from the providers' answers.

May import `gateway.config`, `gateway.errors`, `gateway.routing`, `gateway.ops`,
`gateway.resilience` (guards and the backend registry), `gateway.state`, `gateway.edge`
(the request's principal and id, body reading), `gateway.cache` and `backends.base`.
Nothing imports it but the app factory.
"""
