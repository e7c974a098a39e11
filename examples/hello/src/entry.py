"""Echoes which PoP served the request and what the edge knows about the client (request.cf)."""

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        cf = request.cf
        return Response.json({
            "message": self.env.GREETING,
            "colo": cf.colo,
            "ray": request.headers.get("cf-ray"),
            "client": {"country": cf.country, "city": cf.city, "latitude": cf.latitude, "longitude": cf.longitude},
            "cf": cf,
        })
