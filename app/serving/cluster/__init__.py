"""LiveSight on a Ray Serve cluster: one replica = one engine (a loaded model and its session manager).

Modules: ``errors`` (the cluster's errors), ``config`` (:class:`ClusterConfig`), ``storage``
(:class:`MemoryRoot`: the shared memory root, a POSIX path or an fsspec URL, with per-session
epochs), ``manager`` (:class:`ClusterSessionManager`: sessions keyed by the client's session id,
saved to and reopened from the root), ``adapter`` (a Starlette websocket served by the
websocket API's own handler), ``deployment`` (the Ray Serve deployment, its FastAPI ingress and
``run_cluster`` for ``livesight serve --ray``), ``registry`` (the replicas' health and load, for the
CLI), and the page under ``--ray``: ``page`` (its model-free Serve deployment at ``/page``),
``remote_manager`` (:class:`RemoteManager`: the page's manager, each call routed by session key to
the owner replica) and ``page_ops`` (:class:`PageSessions`: the replica's side). Ray is imported only
by ``deployment``, ``registry`` and ``page``, inside functions.
"""
