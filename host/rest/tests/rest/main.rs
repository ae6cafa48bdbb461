//! Integration tests of the REST API, in one test binary: a fake daemon with two fake plugins
//! served on 127.0.0.1, exercised with the real `curl` (every route and status), raw TCP (binding,
//! timeouts, graceful shutdown) and `schemathesis` (the OpenAPI document against the server).

mod fake;
mod host_header;
mod http;
mod lifecycle;
mod schemathesis;
mod tools;
