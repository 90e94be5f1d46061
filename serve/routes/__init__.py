"""One APIRouter per resource; ``serve.app`` mounts them."""
