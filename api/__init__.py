"""Tandem's faces, one sub-package per application.

- :mod:`api.http`: the HTTP service (REST recommendations, chat, the LLM gateway, health, metrics);
- :mod:`api.cli`: the ``tandem`` command line, one module per command group;
- :mod:`api.worker`: the embedded LLM worker's HTTP face and its launcher;
- ``api/clients/java``: the legacy platform's Java client.

Shared by all three: :mod:`api.settings` (the one typed settings class), :mod:`api.components`
(the composition root: settings in, retrieval and LLM objects out), :mod:`api.sse` (the one
server-sent-events encoder), :mod:`api.logs` and :mod:`api.console`.
"""
