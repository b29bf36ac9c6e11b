"""Tandem's embedded LLM worker: engines behind the OpenAI chat-completions protocol (HTTP face in ``api/``)."""
