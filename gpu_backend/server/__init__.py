"""The backend service: HTTP (Workers AI REST, OpenAI-compatible) and WebSocket in front of the engine."""
