"""Answers from Shakespeare, as Cloudflare's RAG tutorial builds them: Workers AI, Vectorize and D1.

Each passage is a row of the D1 table `passages` (migrations/0001_create_passages.sql); its
embedding is upserted into the Vectorize index with the row's id as the vector id. GET /?q=QUESTION
embeds the question, queries the index for the three nearest ids, reads their texts from D1 and
asks the text model to answer from them: {"answer", "sources": [{"text", "score"}]}.
The bundled passages (src/passages.txt) are added at the first question when the table is empty;
POST /ingest with {"passages": ["...", ...]} adds others (a text already stored is skipped), and
with no body keeps the bundled passages only. Every PoP reads and writes the same D1 database and
Vectorize index, and both outlast restarts.
"""

import asyncio
import json
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from workers import Response, WorkerEntrypoint

EMBEDDING_MODEL = "@cf/baai/bge-small-en-v1.5"
TEXT_MODEL = "@cf/meta/llama-3.1-8b-instruct"
TOP_K = 3
MAX_PER_CALL = 100  # texts per embeddings call, and bound parameters per D1 query: Cloudflare's limits
DEFAULT_MAX_TOKENS = 96
SETTINGS = {"max_tokens": int, "temperature": float, "seed": int}  # query parameters passed to the text model
SYSTEM_PROMPT = "Answer from these passages of Shakespeare only:\n\n{passages}"  # short: small models have small contexts
INSERT_NEW = "INSERT INTO passages (text) VALUES (?) ON CONFLICT (text) DO NOTHING RETURNING id, text"
SETUP_HINT = ("set up the database first: wrangler d1 migrations apply DB --local "
              "(edgewise d1 migrations apply DB --local)")
BUNDLED = [text.strip() for text in (Path(__file__).parent / "passages.txt").read_text().split("\n\n")
           if text.strip()]


class BadRequest(Exception):
    """The question or the passages are missing or malformed: a 400."""


ingesting = asyncio.Lock()  # two first questions at once add the bundled passages once


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
        except Exception as failure:  # a model's refusal ("<code>: <message>"), or D1's or Vectorize's
            message = str(failure)
            if "no such table: passages" in message:
                message = f"{message}: {SETUP_HINT}"
            return error_response(message, 502)
        return error_response("GET /?q=QUESTION, or POST /ingest", 404)

    async def ask(self, query):
        question = query.get("q", [""])[0].strip()
        if not question:
            raise BadRequest("ask a question: GET /?q=Who+is+banished")
        settings = {"max_tokens": DEFAULT_MAX_TOKENS, **read_settings(query)}
        await self.add_bundled_once()
        [vector] = await self.embed([question])
        sources = await self.nearest(vector)
        passages = "\n\n".join(f"[{number}] {source['text']}" for number, source in enumerate(sources, 1))
        messages = [{"role": "system", "content": SYSTEM_PROMPT.format(passages=passages)},
                    {"role": "user", "content": question}]
        result = await self.env.AI.run(TEXT_MODEL, {"messages": messages, **settings})
        return Response.json({"answer": result["response"], "sources": sources})

    async def nearest(self, vector):
        """The TOP_K passages nearest to `vector`, best first: ids and scores from Vectorize, texts from D1."""
        matches = (await self.env.VECTOR_INDEX.query(vector, topK=TOP_K))["matches"]
        ids = [int(match["id"]) for match in matches]
        if not ids:
            return []
        statement = self.env.DB.prepare(f"SELECT id, text FROM passages WHERE id IN ({placeholders(ids)})")
        texts = {row["id"]: row["text"] for row in (await statement.bind(*ids).all())["results"]}
        return [{"text": texts[int(match["id"])], "score": round(match["score"], 4)}
                for match in matches if int(match["id"]) in texts]  # a row deleted meanwhile is skipped

    async def ingest(self, request):
        body = await request.text()
        if body.strip():
            passages = parse_passages(body)
            await self.add_bundled_once()  # yours come in addition to the bundled ones
            async with ingesting:
                answer = {"added": await self.add(passages)}
        else:
            async with ingesting:
                removed = await self.remove_all_but(BUNDLED)
                answer = {"added": await self.add(BUNDLED), "removed": removed}
        answer["passages"] = await self.env.DB.prepare("SELECT COUNT(*) AS n FROM passages").first("n")
        return Response.json(answer)

    async def add_bundled_once(self):
        if await self.is_empty():
            async with ingesting:
                if await self.is_empty():  # another request may have added them while this one waited
                    await self.add(BUNDLED)

    async def is_empty(self):
        return await self.env.DB.prepare("SELECT 1 FROM passages LIMIT 1").first() is None

    async def add(self, texts):
        """Store the texts not stored yet: their rows, then their vectors under the rows' ids. How many were new."""
        statements = [self.env.DB.prepare(INSERT_NEW).bind(text) for text in dict.fromkeys(texts)]
        rows = [row for result in await self.env.DB.batch(statements) for row in result["results"]]
        try:
            vectors = await self.embed([row["text"] for row in rows])
            for start in range(0, len(rows), MAX_PER_CALL):
                await self.env.VECTOR_INDEX.upsert([
                    {"id": str(row["id"]), "values": values}
                    for row, values in zip(rows[start:start + MAX_PER_CALL], vectors[start:start + MAX_PER_CALL])])
        except Exception:
            await self.delete_rows([row["id"] for row in rows])  # no row is left without its vector
            raise
        return len(rows)

    async def remove_all_but(self, texts):
        """Delete the passages whose text is not one of `texts`, vectors first. How many went."""
        keep = set(texts)
        rows = (await self.env.DB.prepare("SELECT id, text FROM passages").all())["results"]
        ids = [row["id"] for row in rows if row["text"] not in keep]
        for start in range(0, len(ids), MAX_PER_CALL):
            await self.env.VECTOR_INDEX.deleteByIds([str(row_id) for row_id in ids[start:start + MAX_PER_CALL]])
        await self.delete_rows(ids)
        return len(ids)

    async def delete_rows(self, ids):
        chunks = [ids[start:start + MAX_PER_CALL] for start in range(0, len(ids), MAX_PER_CALL)]
        if chunks:
            await self.env.DB.batch([
                self.env.DB.prepare(f"DELETE FROM passages WHERE id IN ({placeholders(chunk)})").bind(*chunk)
                for chunk in chunks])

    async def embed(self, texts):
        vectors = []
        for start in range(0, len(texts), MAX_PER_CALL):
            result = await self.env.AI.run(EMBEDDING_MODEL, {"text": texts[start:start + MAX_PER_CALL]})
            vectors.extend(result["data"])
        return vectors


def placeholders(values):
    return ", ".join("?" * len(values))


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
        raise BadRequest('POST /ingest takes {"passages": ["some text", ...]} (or no body: the bundled passages only)')
    return [passage.strip() for passage in passages]


def error_response(message, status):
    return Response.json({"error": message}, status=status)
