"""An idempotent route of your own on a Flock app: `@idempotent()` under `@app.post(...)`.

    ShopOrder --invoicer--> ShopInvoice

`POST /orders` publishes an order; retrying it with the same `Idempotency-Key` returns the
first answer (header `Idempotent-Replayed: true`) and publishes nothing new.

Try it:
    uv run python examples/idempotent_route.py
    curl -i -X POST http://127.0.0.1:8345/orders -H 'Content-Type: application/json' \
         -H 'Idempotency-Key: order-1' -d '{"item": "tea", "quantity": 2}'
    (run the curl twice: the second answer is the first one, replayed)
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from flock import Flock, flock_type
from flock.api.idempotency import idempotent
from flock.api.service import BlackboardHTTPService


@flock_type
class ShopOrder(BaseModel):
    item: str = Field(min_length=1)
    quantity: int = Field(gt=0)


@flock_type
class ShopInvoice(BaseModel):
    item: str
    total_cents: int


PRICE_CENTS = 450


def invoice(order: ShopOrder) -> ShopInvoice:
    return ShopInvoice(item=order.item, total_cents=order.quantity * PRICE_CENTS)


class OrderPlaced(BaseModel):
    order_id: str
    correlation_id: str


def build() -> BlackboardHTTPService:
    flock = Flock("shop")
    flock.agent("invoicer").consumes(ShopOrder).publishes(ShopInvoice).with_engines(invoice)
    service = BlackboardHTTPService(flock)

    @service.app.post("/orders", status_code=201, tags=["shop"])
    @idempotent()
    async def place_order(order: ShopOrder) -> OrderPlaced:
        """Place an order. Send an Idempotency-Key to make retries safe."""
        artifact = await flock.publish(order)
        return OrderPlaced(order_id=artifact.id, correlation_id=artifact.correlation_id)

    return service


service = build()
app = service.app

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8345)
