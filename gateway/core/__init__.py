"""The pure core of ws-gateway: no sockets, no event loop, no clock of its own.

Modules: :mod:`~gateway.core.codec` (frame encoding and masking), :mod:`~gateway.core.scanner`
(the frame-level relay walker), :mod:`~gateway.core.sink` (what the scanner delivers to and the
message positions it reports), :mod:`~gateway.core.closecodes` and
:mod:`~gateway.core.closerules` (close codes, and the close table as data),
:mod:`~gateway.core.closing` (one leg's closing handshake),
:mod:`~gateway.core.counts` (what one direction of a session carried),
:mod:`~gateway.core.handshake` (the upstream upgrade request and response),
:mod:`~gateway.core.upgrade` (strict checks of a client's upgrade request),
:mod:`~gateway.core.forwarding` (which headers go upstream),
:mod:`~gateway.core.compression` (permessage-deflate negotiation),
:mod:`~gateway.core.deflate` and :mod:`~gateway.core.inflate` (compressing the app's messages,
inflating the client's), :mod:`~gateway.core.replay` (the replay buffer),
:mod:`~gateway.core.delivery` (what the upstream confirmed, the delivery ledger and the loss rules),
:mod:`~gateway.core.outage` (an upstream loss judged, and the replay buffer it starts),
:mod:`~gateway.core.resume` (client resume: tokens, messages, the replay log),
:mod:`~gateway.core.backoff` (retry decision, backoff, breaker), :mod:`~gateway.core.targets`
(upstream targets), :mod:`~gateway.core.labels` (metric label vocabularies),
:mod:`~gateway.core.config`, :mod:`~gateway.core.parsers` and :mod:`~gateway.core.units`.
Nothing here imports the asyncio layer above it, and ``tests/unit/test_layout.py`` holds the
core to an allow-list of pure libraries; the clock is passed in where one is needed.
"""
