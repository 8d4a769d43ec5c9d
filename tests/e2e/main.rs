//! End-to-end tests: the real `sting` binary, started as a separate process on an ephemeral
//! port with its own data dir (a real SQLite file), driven over real sockets.

mod admin;
mod auth;
mod browser;
mod chat;
mod cluster;
mod edge;
mod harness;
mod knowledge;
mod marketplace;
mod models;
mod openai;
mod overload;
mod passkeys;
mod store_copy;
mod system;
mod web;
mod ws;
