"""The web kit shared by both services (the prediction API in `api/` and the embedder service in
`embedder/`): what every HTTP front of the product needs and neither service owns. Transport
only: it may import `dc`, never the other way round, and neither service imports the other.

- `body`: reading a JSON request body within the size limit.
- `errors`: the error table (`dc.errors` type -> HTTP status) and the JSON error envelope.
- `request_ids`: the server's request id and the caller's X-Request-ID.
- `hooks`: the clock, counting and id headers every request gets.
- `prometheus`: latency buckets and metrics correct under several gunicorn workers.
- `gunicorn_base`: the gunicorn settings both services' configs share.
- `worker`: the gunicorn worker both services run on.
"""
