"""`aiops serve`: the supervisor, its worker processes and everything a worker does with a request.

One request's walk: :mod:`.supervisor` (binds the port, starts and replaces workers) ->
:mod:`.worker` (the process: its listening socket, accept loop, shutdown) -> :mod:`.http.connection`
(httptools parsing, bounds as bytes arrive) -> :mod:`.http.routes` (route, method, API key,
declared length) -> :mod:`.app` (admission, placement by :mod:`.scheduling`, answers, timeouts) ->
:mod:`.inference_thread` or the loop itself -> :mod:`.calls` (the handler, through
:class:`aiops.inference.contract.InferenceHandler`) -> :mod:`.http.responses` (status lines, heads,
chunked bodies), or for a stream :mod:`.stream_sender` (the generator on its own thread, chunked
or :mod:`.http.eventstream` frames). :mod:`.watchdog` guards the calls the loop runs itself.
:mod:`.container` is the image's entry (``docker run IMAGE serve``, :file:`Dockerfile`).
"""
