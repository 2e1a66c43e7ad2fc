"""Serving: the OpenAI-compatible Ray Serve application (app.py), its request format (openai.py), its page."""
