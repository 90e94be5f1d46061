"""One APIRouter per resource; ``serve.api.app`` mounts them."""
