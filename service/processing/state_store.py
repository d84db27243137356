"""The account states a worker holds: the busiest as live objects, the rest as their bytes.

A live :class:`~service.model.account_state.AccountState` of a busy account
is about 34 KB of Python objects (windows, maps, the last evaluation and
its caches); the same state as its changelog record
(:meth:`AccountState.to_bytes`) is 1.5-3 KB. :class:`StateStore` keeps at
most ``live_limit`` states as objects, in least-recently-used order, and every
other one as its bytes ("cold"): memory grows with the accounts in use, not
with every account a worker owns.

Reading a cold state (``store[key]``, ``store.get(key)``) decodes it and
makes it live again, which may turn the least recently used live state cold
(encoded). A state decoded from its bytes scores exactly as the one it was
encoded from (the same contract as a state restored from the changelog after
a restart, see ``AccountState.to_bytes``); it only starts without the
evaluation caches, so its next rescore costs a full evaluation.

``live_limit`` 0 keeps every state live (no encoding, no order upkeep).

The store is the faust table's in-memory mapping (``streams.account_table``)
but knows nothing of faust: a plain ``MutableMapping`` whose readers that
must not disturb the order or decode everything use :meth:`peek`,
:meth:`encoded` and :meth:`bucket`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from typing import Any, overload

from service.model.account_state import AccountState

__all__ = ["StateStore"]

_MISSING: Any = object()


class StateStore(MutableMapping[bytes, AccountState]):
    """Account key -> state, at most ``live_limit`` of them as live objects.

    Iteration and ``len`` cover live and cold states alike; ``store[key]``
    always returns a live object (decoding a cold one).
    """

    __slots__ = ("_buckets", "_cold", "_live", "decoded", "encoded_count", "live_limit")

    def __init__(self, live_limit: int = 0) -> None:
        if live_limit < 0:
            raise ValueError("live_limit must be >= 0 (0: keep every state live)")
        self.live_limit = live_limit
        self._live: OrderedDict[bytes, AccountState] = OrderedDict()
        #: key -> the state's bytes, for states not held live.
        self._cold: dict[bytes, bytes] = {}
        #: key -> bucket of a cold state when it was encoded (gauges read it
        #: without decoding).
        self._buckets: dict[bytes, str | None] = {}
        #: States decoded from / encoded to bytes since the start (metrics).
        self.decoded = 0
        self.encoded_count = 0

    # ------------------------------------------------------------ mapping

    def __getitem__(self, key: bytes) -> AccountState:
        live = self._live
        state = live.get(key)
        if state is not None:
            if self.live_limit:
                live.move_to_end(key)
            return state
        raw = self._cold.pop(key, None)
        if raw is None:
            raise KeyError(key)
        self._buckets.pop(key, None)
        state = AccountState.from_bytes(raw)
        self.decoded += 1
        live[key] = state
        self._evict()
        return state

    def __setitem__(self, key: bytes, state: AccountState) -> None:
        if self._cold.pop(key, None) is not None:
            self._buckets.pop(key, None)
        live = self._live
        live[key] = state
        if self.live_limit:
            live.move_to_end(key)
            self._evict()

    def __delitem__(self, key: bytes) -> None:
        if key in self._live:
            del self._live[key]
        elif key in self._cold:
            del self._cold[key]
            self._buckets.pop(key, None)
        else:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self._live or key in self._cold

    def __iter__(self) -> Iterator[bytes]:
        # A snapshot: reading a state while iterating may move it between
        # the live and the cold map.
        return iter([*self._live, *self._cold])

    def __len__(self) -> int:
        return len(self._live) + len(self._cold)

    @overload
    def pop(self, key: bytes) -> AccountState: ...

    @overload
    def pop(self, key: bytes, default: Any) -> Any: ...

    def pop(self, key: bytes, default: Any = _MISSING) -> Any:
        """Remove ``key``; returns its state (decoded if cold: use ``discard``
        when the state is not wanted)."""
        if key in self._live:
            return self._live.pop(key)
        raw = self._cold.pop(key, None)
        if raw is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self._buckets.pop(key, None)
        return AccountState.from_bytes(raw)

    def discard(self, key: bytes) -> None:
        """Remove ``key`` if held, without decoding anything."""
        if self._live.pop(key, None) is None and self._cold.pop(key, None) is not None:
            self._buckets.pop(key, None)

    def clear(self) -> None:
        self._live.clear()
        self._cold.clear()
        self._buckets.clear()

    # ------------------------------------------------------------ readers

    def peek(self, key: bytes) -> AccountState | None:
        """The state of ``key`` without changing the store: the live object,
        or a throwaway copy decoded from a cold state's bytes (read only)."""
        state = self._live.get(key)
        if state is not None:
            return state
        raw = self._cold.get(key)
        return None if raw is None else AccountState.from_bytes(raw)

    def live(self, key: bytes) -> AccountState | None:
        """``key``'s live object, if it is held live (nothing decoded or reordered)."""
        return self._live.get(key)

    def encoded(self, key: bytes) -> bytes | None:
        """A cold state's bytes (what its changelog record holds); None when
        ``key`` is live or not held."""
        return self._cold.get(key)

    def bucket(self, key: bytes) -> str | None:
        """The bucket of ``key``'s last rescore, without decoding (None: not
        scored yet, or not held)."""
        state = self._live.get(key)
        if state is not None:
            return state.bucket
        return self._buckets.get(key)

    @property
    def live_count(self) -> int:
        """States held as live objects."""
        return len(self._live)

    # ------------------------------------------------------------ internals

    def _evict(self) -> None:
        limit = self.live_limit
        if not limit:
            return
        live = self._live
        while len(live) > limit:
            key, state = live.popitem(last=False)
            self._cold[key] = state.to_bytes()
            self._buckets[key] = state.bucket
            self.encoded_count += 1
