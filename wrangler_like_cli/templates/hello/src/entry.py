"""{{name}}: a Python Worker. Edit this file while `edgewise dev` runs; it reloads on save."""

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        # request.cf: what the edge knows about the client, and which PoP (colo) served it
        return Response.json({"message": self.env.MESSAGE, "colo": request.cf.colo, "cf": request.cf})
