"""A FastAPI service paginated by fastapi-pagination, for apisync's real-server
tests. It holds its orders in memory, seeded from seed/records.py at start, so
each test's process has its own copy; PATCH, POST and DELETE change it.

Shapes (fastapi-pagination's defaults, as most services use them):
- `Page`: `?page=1&size=50` (size at most 100) gives
  `{"items", "total", "page", "size", "pages"}`; a page past the last is 200
  with `"items": []`.
- `LimitOffsetPage`: `?limit=50&offset=0` (limit at most 100) gives
  `{"items", "total", "limit", "offset"}`.
- A size or limit above 100 is refused with 422, not capped.

Run: `python -m uvicorn app:app` from this directory.
"""

import sys
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi_pagination import LimitOffsetPage, Page, add_pagination, paginate
from fastapi_pagination.utils import disable_installed_extensions_check
from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "seed"))
import records  # noqa: E402  (seed/ is not a package on the path)


class OrderIn(BaseModel):
    reference: str
    status: str
    customer: str
    total_cents: int
    lines: list[dict] = []


class OrderPatch(BaseModel):
    reference: str | None = None
    status: str | None = None
    customer: str | None = None
    total_cents: int | None = None
    lines: list[dict] | None = None


class Order(OrderIn):
    id: int
    updated_at: str


# Django shares the venv; fastapi-pagination would warn on every request that
# its Django extension exists, but these orders live in a list, not a queryset.
disable_installed_extensions_check()

app = FastAPI(title="apisync real-server orders")
# Insertion order is id order: ids only grow.
ORDERS: dict[int, dict] = {o["id"]: o for o in records.fastapi_orders()}


@app.get("/pages/orders")
def pages() -> Page[Order]:
    return paginate(list(ORDERS.values()))


@app.get("/offsets/orders")
def offsets() -> LimitOffsetPage[Order]:
    return paginate(list(ORDERS.values()))


@app.get("/all/orders")
def everything() -> list[Order]:
    return list(ORDERS.values())


@app.patch("/orders/{order_id}")
def patch(order_id: int, change: OrderPatch) -> Order:
    order = ORDERS.get(order_id)
    if order is None:
        raise HTTPException(status_code=404, detail="Order not found")
    order.update(change.model_dump(exclude_unset=True))
    order["updated_at"] = records.now_text()
    return order


@app.post("/orders", status_code=201)
def create(new: OrderIn) -> Order:
    order_id = max(ORDERS, default=0) + 1
    ORDERS[order_id] = {"id": order_id, **new.model_dump(), "updated_at": records.now_text()}
    return ORDERS[order_id]


@app.delete("/orders/{order_id}", status_code=204)
def delete(order_id: int) -> None:
    if ORDERS.pop(order_id, None) is None:
        raise HTTPException(status_code=404, detail="Order not found")


add_pagination(app)
