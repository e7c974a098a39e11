"""Answers from Shakespeare: passages embedded with Workers AI, the nearest three handed to a text model.

GET /?q=QUESTION embeds the question, picks the three passages nearest to it (cosine similarity)
and asks the text model to answer from them: {"answer", "sources": [{"text", "score"}]}.
The bundled passages (src/passages.txt) are embedded at the first question; POST /ingest with
{"passages": ["...", ...]} adds others, and with no body embeds the bundled ones afresh.
The vectors live in module memory, so each PoP keeps its own, as each isolate would.
"""

import asyncio
import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from workers import Response, WorkerEntrypoint

from vectors import VectorIndex

EMBEDDING_MODEL = "@cf/baai/bge-small-en-v1.5"
TEXT_MODEL = "@cf/meta/llama-3.1-8b-instruct"
TOP_K = 3
MAX_TEXTS_PER_CALL = 100  # Workers AI's limit for one embeddings call
DEFAULT_MAX_TOKENS = 96
SETTINGS = {"max_tokens": int, "temperature": float, "seed": int}  # query parameters passed to the text model
SYSTEM_PROMPT = "Answer from these passages of Shakespeare only:\n\n{passages}"  # short: small models have small contexts
BUNDLED = [text.strip() for text in (Path(__file__).parent / "passages.txt").read_text().split("\n\n")
           if text.strip()]


class BadRequest(Exception):
    """The question or the passages are missing or malformed: a 400."""


index = VectorIndex()
ingesting = asyncio.Lock()  # two first questions at once embed the passages once


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        try:
            if url.path == "/" and request.method == "GET":
                return await self.ask(parse_qs(url.query))
            if url.path == "/ingest" and request.method == "POST":
                return await self.ingest(request)
        except BadRequest as problem:
            return error_response(str(problem), 400)
        except Exception as failure:  # InferenceUpstreamError: "<code>: <message>"
            return error_response(str(failure), 502)
        return error_response("GET /?q=QUESTION, or POST /ingest", 404)

    async def ask(self, query):
        question = query.get("q", [""])[0].strip()
        if not question:
            raise BadRequest("ask a question: GET /?q=Who+is+banished")
        settings = {"max_tokens": DEFAULT_MAX_TOKENS, **read_settings(query)}
        async with ingesting:
            await self.add_bundled_once()
        [vector] = await self.embed([question])
        sources = index.nearest(vector, TOP_K)
        passages = "\n\n".join(f"[{number}] {source['text']}" for number, source in enumerate(sources, 1))
        messages = [{"role": "system", "content": SYSTEM_PROMPT.format(passages=passages)},
                    {"role": "user", "content": question}]
        result = await self.env.AI.run(TEXT_MODEL, {"messages": messages, **settings})
        return Response.json({"answer": result["response"], "sources": sources})

    async def ingest(self, request):
        body = await request.text()
        passages = parse_passages(body) if body.strip() else None
        async with ingesting:
            if passages is None:
                index.clear()
                passages = BUNDLED
            else:
                await self.add_bundled_once()  # yours come in addition to the bundled ones
            index.add(passages, await self.embed(passages))
        return Response.json({"added": len(passages), "passages": len(index)})

    async def add_bundled_once(self):
        if not len(index):
            index.add(BUNDLED, await self.embed(BUNDLED))

    async def embed(self, texts):
        vectors = []
        for start in range(0, len(texts), MAX_TEXTS_PER_CALL):
            result = await self.env.AI.run(EMBEDDING_MODEL, {"text": texts[start:start + MAX_TEXTS_PER_CALL]})
            vectors.extend(result["data"])
        return vectors


def read_settings(query):
    settings = {}
    for name, kind in SETTINGS.items():
        if name in query:
            try:
                settings[name] = kind(query[name][0])
            except ValueError:
                raise BadRequest(f"{name} must be a number, got {query[name][0]!r}") from None
    return settings


def parse_passages(body):
    try:
        passages = json.loads(body).get("passages")
    except (ValueError, AttributeError):
        passages = None
    if not isinstance(passages, list) or not passages or not all(isinstance(p, str) and p.strip() for p in passages):
        raise BadRequest('POST /ingest takes {"passages": ["some text", ...]} (or no body: the bundled passages)')
    return [passage.strip() for passage in passages]


def error_response(message, status):
    return Response.json({"error": message}, status=status)
