"""The LLM worker's HTTP face (an OpenAI-compatible endpoint over a worker service) and its launcher."""
