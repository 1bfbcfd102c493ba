//! `cartwright controller` against the in-memory API server, with the kwok provider.

pub mod apiserver_protocol;
