"""One generic registry by name, used for losses, architectures and datasets."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from kdcore.errors import SpecError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects. `@REG.register("name")` adds one; `REG.get(name)` looks it up
    and raises SpecError naming the known choices when the name is unknown."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str, *, field: str | None = None) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise SpecError(
                f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}",
                field=field,
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
