"""Small shared utilities (``llava.utils.openai_client``: the OpenAI-compatible chat client with a reply cache)."""
