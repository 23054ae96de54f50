"""Distribution: an orchestration node that owns the storage, and workers that reach it over HTTP.

- `remote.RemoteStorage`: the Storage protocol spoken to a node (a worker's storage).
- `node.Node`: applies workers' calls to the real storage; registry, heartbeats, loss.
- `http.NodeApp`: the node's worker API as an ASGI app (`mount` puts it beside another).
- `worker.Worker`: a queue's runtime with a node as its storage, plus heartbeats.
- `service`: `queue.orchestration` and `queue.worker`.
- `wire`: the shared request/reply schema; `fingerprint`: job code fingerprints.
"""
