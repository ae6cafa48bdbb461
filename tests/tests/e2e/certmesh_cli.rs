//! The certmesh command line as a newcomer meets it (issue 10 items 2, 3, 4, 5, 7, 9): advice
//! that names commands which exist ([`commands`]), flags refused with every reason at once, a
//! mistyped enrollment code caught before it costs an attempt, `--ca NAME.local` resolved through
//! koi-mdns, a member told whom to ask when the CA is locked, and member certificates that hold
//! the `host.local` name a client can actually resolve.

mod commands;
