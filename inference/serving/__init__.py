"""`aiops serve`: the supervisor, its worker processes and everything a worker does with a request.

One request's walk: :mod:`.worker` (the process: listening socket, accept loop, shutdown) ->
:mod:`.http.connection` (httptools parsing, bounds as bytes arrive) -> :mod:`.http.routes`
(route, method, API key, declared length) -> :mod:`.app` (admission, placement by
:mod:`.scheduling`, answers, timeouts) -> :mod:`.inference_thread` or the loop itself ->
:mod:`.calls` (the handler contract) -> :mod:`.http.responses` (status lines, heads, chunked
bodies) or :mod:`.streaming` (a handler's iterator, on its own thread). :mod:`.watchdog` guards
the calls the loop runs itself.
"""
