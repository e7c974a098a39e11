from urllib.parse import parse_qs, urlparse

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        if url.path == "/notes" and request.method == "POST":
            note = await request.json()
            if not isinstance(note.get("body"), str) or not note["body"]:
                return Response.json({"error": "send {\"body\": \"...\", \"tag\": \"...\"}"}, status=400)
            result = await self.env.DB.prepare("INSERT INTO notes (body, tag) VALUES (?, ?)").bind(
                note["body"], note.get("tag")).run()
            return Response.json({"id": result.meta.last_row_id}, status=201)
        if url.path == "/notes":
            tag = parse_qs(url.query).get("tag", [None])[0]
            if tag is None:
                statement = self.env.DB.prepare("SELECT id, body, tag FROM notes ORDER BY id")
            else:
                statement = self.env.DB.prepare("SELECT id, body, tag FROM notes WHERE tag = ? ORDER BY id").bind(tag)
            return Response.json((await statement.all()).results)
        if url.path.startswith("/notes/") and request.method == "DELETE":
            result = await self.env.DB.prepare("DELETE FROM notes WHERE id = ?").bind(
                int(url.path.removeprefix("/notes/"))).run()
            return Response.json({"deleted": result.meta.changes})
        return Response("POST /notes, GET /notes[?tag=...], DELETE /notes/<id>\n", status=404)
