//! Handler tests without a socket: the router over an in-memory store.
