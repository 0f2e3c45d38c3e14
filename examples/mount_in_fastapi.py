"""Tidings inside an existing FastAPI app. Run: ``uvicorn examples.mount_in_fastapi:app``."""

from fastapi import FastAPI
from pydantic import BaseModel

from tidings import Tidings

tidings = Tidings()  # settings from TIDINGS_* env vars; missing keys go to ./tidings-data
app = FastAPI(lifespan=tidings.lifespan)
app.include_router(tidings.router)  # /connection/websocket, /api/<method>, /healthz


class News(BaseModel):
    title: str


@app.post("/news")
async def post_news(news: News) -> dict[str, int]:
    position = await tidings.publish("news", news.model_dump())
    return {"offset": position.offset}
