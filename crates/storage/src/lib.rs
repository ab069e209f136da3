//! A replica's durable storage (openraft log store and state machine on sled).
